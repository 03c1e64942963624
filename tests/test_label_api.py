"""/v1/tags, /v1/hierarchy and /v1/hierarchy/predict with the shipped tagger and Vec2Bundle model."""
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models import checkpoint
from models.label_data import VOCAB

TAGGER = checkpoint.WEIGHTS_DIR / "tagger.pt"
HIERARCHY = checkpoint.WEIGHTS_DIR / "hierarchy.pt"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def client(data_dir):
    """The API over a fresh data folder holding the generated default library (not indexed)."""
    from service.app import create_app
    from shape_library.bootstrap import ensure_default_library, library_from_settings
    from shape_library.settings import get_settings

    ensure_default_library(get_settings(), library_from_settings(), progress=False)
    return TestClient(create_app())


@pytest.fixture(scope="module")
def car_photos():
    """Photo-like renderings of the default library's cars (the tagger never saw these exact photos)."""
    import tempfile
    from pathlib import Path

    from shape_library.bootstrap import ensure_default_library
    from shape_library.library import ShapeLibrary
    from shape_library.settings import Settings
    from shape_library.synthetic import SyntheticConfig, generate

    data = Path(tempfile.mkdtemp()) / "var"
    lib = ShapeLibrary(data)
    ensure_default_library(Settings(data_dir=data), lib, progress=False)
    cars = [s.id for s in lib.shapes() if s.category == "car"]
    cfg = SyntheticConfig(p_occlusion=0.0, p_clutter=0.0, p_truncate=0.0).with_size(96)
    return [s.image for s in generate(lib, cars, 8, 4242, cfg)]


def test_shipped_cards_and_sizes():
    for path, words in ((TAGGER, ("seed", "none", "ECE", "Command")), (HIERARCHY, ("seed", "Ward", "Command"))):
        assert path.is_file() and path.stat().st_size < 30 * 2**20
        card = path.with_suffix(".md").read_text()
        assert all(w in card for w in words), path
    model, meta = checkpoint.load(TAGGER)
    assert model.config.head == "quasibinary" and tuple(model.labels) == VOCAB and 0 < meta["none_threshold"] < 1


def test_tags_of_car_photos_and_of_an_empty_image(client, car_photos):
    said_car, threshold = 0, None
    for img in car_photos:
        r = client.post("/v1/tags", files={"image": ("p.png", _png(img), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [t["label"] for t in body["tags"]] and {t["label"] for t in body["tags"]} == set(VOCAB)
        probs = [t["probability"] for t in body["tags"]]
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        threshold = body["threshold"]
        assert body["none"] == (probs[0] < threshold)
        said_car += body["tags"][0]["label"] == "car" and not body["none"]
    assert said_car >= len(car_photos) // 2, f"car found in only {said_car} of {len(car_photos)} photos"
    grey = np.full((96, 96, 3), 128, np.uint8)
    body = client.post("/v1/tags", files={"image": ("g.png", _png(grey), "image/png")}).json()
    assert body["none"] is True and body["tags"][0]["probability"] < threshold


def test_tags_reject_bad_input(client):
    assert client.post("/v1/tags", files={"image": ("p.png", b"not an image", "image/png")}).status_code == 415
    ok = _png(np.zeros((32, 32, 3), np.uint8))
    r = client.post("/v1/tags", files={"image": ("p.png", ok, "image/png")}, data={"bbox": "0,0,99,99"})
    assert r.status_code == 422 and "bbox" in r.json()["detail"].lower()
    assert client.post("/v1/tags").status_code == 422


def test_hierarchy_tree_holds_every_class_once(client):
    r = client.get("/v1/hierarchy")
    assert r.status_code == 200
    body = r.json()
    leaves = []

    def walk(node):
        if "children" not in node:
            leaves.extend(node["labels"])
            return
        assert sorted(node["labels"]) == sorted(sum((c["labels"] for c in node["children"]), []))
        for c in node["children"]:
            walk(c)

    walk(body["tree"])
    assert len(leaves) == len(set(leaves)) == body["classes"] > 50
    assert set(body["predictors"]) == {"top-k", "max-rew", "darts", "maxk-rew"}


def test_hierarchy_predict_hedges_more_as_the_tradeoff_grows(client, car_photos):
    photo = _png(car_photos[0])
    post = lambda **form: client.post("/v1/hierarchy/predict", files={"image": ("p.png", photo, "image/png")}, data=form)  # noqa: E731
    for predictor in ("top-k", "max-rew", "darts", "maxk-rew"):
        specific = post(tradeoff="0", predictor=predictor)
        safe = post(tradeoff="1", predictor=predictor)
        assert specific.status_code == safe.status_code == 200, (predictor, specific.text, safe.text)
        a, b = specific.json()["bundles"], safe.json()["bundles"]
        assert a and b and a[0]["specificity"] >= b[0]["specificity"]
        for bundle in a + b:
            assert {"labels", "probability", "specificity", "shape_ids"} <= set(bundle)
            assert 0 <= bundle["probability"] <= 1 + 1e-6 and 0 <= bundle["specificity"] <= 1
    assert len(post(tradeoff="0", predictor="top-k").json()["bundles"][0]["labels"]) == 1
    root = post(tradeoff="1", predictor="max-rew").json()["bundles"][0]
    assert root["specificity"] == 0 and len(root["labels"]) == client.get("/v1/hierarchy").json()["classes"]
    # the default library's shapes are classes of the hierarchy: the root bundle maps onto all of them
    assert len(root["shape_ids"]) == len(client.get("/v1/shapes").json()) > 0
    for bad in ({"tradeoff": "1.5"}, {"tradeoff": "nan"}, {"predictor": "oracle"}):
        r = post(**bad)
        assert r.status_code == 422 and r.json()["detail"], bad
