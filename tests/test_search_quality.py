"""Ranking quality with the shipped weights, on a few shapes of the generated default library."""
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models import checkpoint
from models.pairs import pose_rotations
from models import geometry
from shape_library import settings
from shape_library.settings import REPO_ROOT

WEIGHTS = REPO_ROOT / "models" / "weights" / "matching.pt"
SHAPES = ("sedan", "airliner", "sailboat")

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped matching weights missing")


@pytest.fixture(scope="module")
def engine_env(tmp_path_factory):
    from models import matching  # noqa: F401
    from shape_library.bootstrap import ensure_default_library
    from shape_library.features import FeatureIndex
    from shape_library.index import ViewIndex, ViewIndexConfig
    from shape_library.library import ShapeLibrary
    from shape_library.search import SearchEngine
    from shape_library.settings import Settings

    data = tmp_path_factory.mktemp("quality") / "var"
    lib = ShapeLibrary(data)
    ensure_default_library(Settings(data_dir=data), lib, progress=False)
    for s in lib.shapes():  # keep three shapes so the index builds in CI time
        if s.name not in SHAPES:
            lib.remove(s.id)
    views = ViewIndex(data / "index", lib, ViewIndexConfig())
    views.sync(progress=False)
    model, _ = checkpoint.load(WEIGHTS)
    features = FeatureIndex(views, model, checkpoint.file_hash(WEIGHTS))
    return data, lib, SearchEngine(lib, features, model)


@pytest.fixture(scope="module")
def photos(engine_env):
    from shape_library.synthetic import SyntheticConfig, generate

    _, lib, _ = engine_env
    return list(generate(lib, [s.id for s in lib.shapes()], 48, 777, SyntheticConfig(p_occlusion=0.0)))


def _err_deg(m, pose):
    got = pose_rotations(np.array([[m.azimuth, m.elevation, m.theta]]))
    want = pose_rotations(np.array([pose[:3]]))
    return float(np.degrees(geometry.geodesic_distance(got, want)[0]))


def test_shape_known_pose_accuracy(engine_env, photos):
    _, _, engine = engine_env
    errs = [_err_deg(engine.search(Image.fromarray(p.image), p.box, shape_ids=[p.shape_id], refine=False).matches[0], p.pose) for p in photos]
    acc = np.mean(np.array(errs) < 30)
    assert acc >= 0.2, (acc, np.round(errs))  # chance: under 1 % of rotations lie within 30 degrees


def test_search_over_shapes_finds_pose_and_refinement_holds(engine_env, photos):
    """Searching all shapes still finds poses well above chance; refinement does not make it worse.

    (How much refinement helps is measured by `models.eval_matching`, not asserted here.)
    """
    _, _, engine = engine_env
    plain, refined = [], []
    for p in photos[:24]:
        img = Image.fromarray(p.image)
        plain.append(_err_deg(engine.search(img, p.box, refine=False).matches[0], p.pose))
        refined.append(_err_deg(engine.search(img, p.box, refine=True).matches[0], p.pose))
    acc_plain, acc_refined = np.mean(np.array(plain) < 30), np.mean(np.array(refined) < 30)
    assert acc_refined >= 0.15 and acc_refined >= acc_plain - 0.1, (acc_plain, acc_refined)


def test_the_shipped_viewpoint_prior_makes_shape_known_poses_more_accurate(engine_env, photos):
    """The service's default search (soft S1 prior) against the matcher alone, shape known: the gain
    measured by models.eval_prior (0.35 -> 0.71 on held-out photos) must show on these photos too."""
    from models.checkpoint import WEIGHTS_DIR
    from shape_library import warm_engine

    if not (WEIGHTS_DIR / "viewpoint.pt").is_file():
        pytest.skip("no viewpoint weights")
    _, _, engine = engine_env
    alone, with_prior = [], []
    for p in photos[:32]:
        img = Image.fromarray(p.image)
        alone.append(_err_deg(engine.search(img, p.box, shape_ids=[p.shape_id], refine=False).matches[0], p.pose))
        res = warm_engine.search(engine, img, p.box, None, [p.shape_id], 1, False, True)
        assert res.matches[0].prior_deg is not None and "viewpoint_prior" in res.timing_ms
        with_prior.append(_err_deg(res.matches[0], p.pose))
    acc_alone, acc_prior = np.mean(np.array(alone) < 30), np.mean(np.array(with_prior) < 30)
    assert acc_prior >= acc_alone + 0.1 and acc_prior >= 0.4, (acc_alone, acc_prior)


def test_the_confidence_power_setting_scales_the_priors_weight(engine_env, photos, monkeypatch):
    from models.checkpoint import WEIGHTS_DIR
    from shape_library import settings, warm_engine

    if not (WEIGHTS_DIR / "viewpoint.pt").is_file():
        pytest.skip("no viewpoint weights")
    _, _, engine = engine_env
    p = photos[0]
    img = Image.fromarray(p.image)
    _, conf, _ = warm_engine.photo_viewpoint(warm_engine.get_viewpoint_model(), img, p.box, "car", engine.views.config.margin)
    monkeypatch.setenv("SHAPESEARCH_SEARCH_PRIOR_WEIGHT", "3")   # not the defaults, so the settings must be read
    monkeypatch.setenv("SHAPESEARCH_SEARCH_PRIOR_CONFIDENCE_POWER", "3")
    settings.get_settings.cache_clear()
    try:
        prior, _ = warm_engine.viewpoint_prior(engine, img, p.box, "car")
    finally:
        monkeypatch.undo()
        settings.get_settings.cache_clear()
    assert conf < 1 and prior.weight == pytest.approx(3 * conf ** 3)


@pytest.fixture()
def client(engine_env, monkeypatch):
    """The API over the fixture's three indexed shapes, with the process caches reset around it."""
    from service import engine as service_engine
    from shape_library import library, settings

    monkeypatch.setenv("SHAPESEARCH_DATA_DIR", str(engine_env[0]))
    settings.get_settings.cache_clear()
    library.open_library.cache_clear()
    service_engine.reset_engine()
    from service.app import create_app

    yield TestClient(create_app())
    settings.get_settings.cache_clear()
    library.open_library.cache_clear()
    service_engine.reset_engine()


def test_api_search_returns_contract_fields(client, photos):
    p = photos[0]
    buf = io.BytesIO()
    Image.fromarray(p.image).save(buf, "JPEG", quality=90)
    bbox = ",".join(f"{v:.0f}" for v in p.box)
    r = client.post("/v1/search", files={"image": ("p.jpg", buf.getvalue(), "image/jpeg")},
                    data={"bbox": bbox, "top_k": "4", "overlay": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["matches"]) == 4 and isinstance(body["no_match"], bool) and "total" in body["timing_ms"]
    m = body["matches"][0]
    assert {"shape_id", "category", "azimuth", "elevation", "theta", "score"} <= set(m)
    assert 0 <= m["azimuth"] < 360 and -90 <= m["elevation"] <= 90 and -180 <= m["theta"] < 180
    assert [x["score"] for x in body["matches"]] == sorted(x["score"] for x in body["matches"])
    raw = [x["raw_score"] for x in body["matches"]]
    assert raw == sorted(raw) and all(x["score"] == max(0.0, x["raw_score"]) for x in body["matches"])
    assert body["overlay_png"].startswith("data:image/png;base64,")
    r = client.post("/v1/search/overlay.png", files={"image": ("p.jpg", buf.getvalue(), "image/jpeg")}, data={"bbox": bbox})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (p.image.shape[1], p.image.shape[0])
    for bad, code in [({"bbox": "0,0,9999,9999"}, 422), ({"category": "spaceship"}, 422), ({"top_k": "0"}, 422)]:
        r = client.post("/v1/search", files={"image": ("p.jpg", buf.getvalue(), "image/jpeg")}, data=bad)
        assert r.status_code == code, (bad, r.text)
    r = client.post("/v1/search", files={"image": ("p.txt", b"hello", "text/plain")})
    assert r.status_code == 415


def test_api_search_with_the_viewpoint_prior_scores_a_fraction_of_the_candidates(client, photos):
    from models.checkpoint import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "viewpoint.pt").is_file():
        pytest.skip("no viewpoint weights")
    p = photos[1]
    buf = io.BytesIO()
    Image.fromarray(p.image).save(buf, "PNG")
    bbox = ",".join(f"{v:.0f}" for v in p.box)
    post = lambda **form: client.post("/v1/search", files={"image": ("p.png", buf.getvalue(), "image/png")},  # noqa: E731
                                      data={"bbox": bbox, "refine": "false", **form}).json()
    full, pruned, default = post(prior="false"), post(prior="true"), post()
    assert full["candidates"] == 3 * 2541 and "viewpoint_prior" not in full["timing_ms"]
    assert full["stage"] == "exhaustive"                         # far below SHAPESEARCH_ANN_MIN_VIEWS
    assert 0 < pruned["candidates"] < full["candidates"] / 10 and "viewpoint_prior" in pruned["timing_ms"]
    assert default["candidates"] == pruned["candidates"]        # the default library's categories all have heads
    assert pruned["candidates"] % 3 == 0                        # the same poses of every shape
    assert all(m["prior_deg"] is None for m in full["matches"])
    for m in pruned["matches"]:                                 # ranked by the weighted mean of the two estimates
        w = m["prior_weight"]
        assert m["prior_deg"] is not None and 0 < w <= settings.get_settings().search_prior_weight and w == pruned["matches"][0]["prior_weight"]
        assert m["raw_score"] == pytest.approx((m["matcher_score"] + w * m["prior_deg"]) / (1 + w), abs=1e-4)
    assert all(m["prior_weight"] is None for m in full["matches"])
    raw = [m["raw_score"] for m in pruned["matches"]]
    assert all(b >= a - 1e-3 for a, b in zip(raw, raw[1:]))


def test_a_batch_search_uses_the_prior_as_the_api_does(client, photos):
    """Batch items and POST /v1/search share one search path: same matches, same prior."""
    import json
    from types import SimpleNamespace

    from models.checkpoint import WEIGHTS_DIR
    from worker import items

    if not (WEIGHTS_DIR / "viewpoint.pt").is_file():
        pytest.skip("no viewpoint weights")
    p = photos[2]
    png = _png_bytes(p.image)
    bbox = ",".join(f"{v:.0f}" for v in p.box)
    direct = client.post("/v1/search", files={"image": ("p.png", png, "image/png")},
                         data={"bbox": bbox, "refine": "false", "top_k": "3"}).json()
    path = items.item_path("job-prior", "p.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    job = SimpleNamespace(id="job-prior", params=json.dumps({"category": None, "shape_ids": None, "top_k": 3, "refine": False}))
    batch = items.search_item(job, SimpleNamespace(input="p.png", params=json.dumps({"bbox": bbox})))
    assert batch["candidates"] == direct["candidates"] < 3 * 2541          # the prior's cut in both
    key = lambda m: (m["shape_id"], round(m["azimuth"], 3), round(m["elevation"], 3), round(m["theta"], 3))  # noqa: E731
    assert [key(m) for m in batch["matches"]] == [key(m) for m in direct["matches"]]
    assert all(m["prior_deg"] is not None for m in batch["matches"])
    off = items.search_item(SimpleNamespace(id="job-prior", params=json.dumps({"top_k": 3, "refine": False, "prior": False})),
                            SimpleNamespace(input="p.png", params=json.dumps({"bbox": bbox})))
    assert off["candidates"] == 3 * 2541 and all(m["prior_deg"] is None for m in off["matches"])


def _png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_api_search_uses_the_tagger_for_no_match_and_the_category_filter(client, photos):
    from models.checkpoint import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "tagger.pt").is_file():
        pytest.skip("no tagger weights")
    post = lambda img, **form: client.post("/v1/search", files={"image": ("p.png", _png_bytes(img), "image/png")},  # noqa: E731
                                           data={"refine": "false", "prior": "false", **form})
    # nothing of the library's categories: the tagger's veto, with its probability
    grey = post(np.full((96, 96, 3), 128, np.uint8)).json()
    threshold = client.post("/v1/tags", files={"image": ("g.png", _png_bytes(np.full((96, 96, 3), 128, np.uint8)), "image/png")}).json()["threshold"]
    assert grey["no_match"] is True and grey["no_match_reason"] == "tagger" and grey["category_probability"] < threshold
    # tag_filter: only the categories the tagger finds are searched
    by_cat = {}
    for s in client.get("/v1/shapes").json():
        by_cat.setdefault(s["category"], []).append(s["id"])
    restricted = 0
    for p in [p for p in photos if p.category == "car"][:6]:
        body = post(p.image, bbox=",".join(f"{v:.0f}" for v in p.box), tag_filter="true").json()
        cats = body["tag_filter"]
        if cats is None:
            assert body["candidates"] == 3 * 2541 and body["no_match_reason"] == "tagger"
            continue
        assert body["candidates"] == sum(len(by_cat[c]) for c in cats) * 2541
        assert {m["category"] for m in body["matches"]} <= set(cats)
        restricted += "car" in cats and len(cats) < len(by_cat)
    assert restricted >= 3, "the tagger should narrow most clean car photos to a few categories including car"
    assert post(photos[0].image).json()["tag_filter"] is None      # not asked for: the whole library


def test_api_search_restricted_to_the_hedged_bundle(client, photos):
    from models.checkpoint import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "hierarchy.pt").is_file():
        pytest.skip("no hierarchy weights")
    p = photos[0]
    post = lambda **form: client.post("/v1/search", files={"image": ("p.png", _png_bytes(p.image), "image/png")},  # noqa: E731
                                      data={"refine": "false", "prior": "false", "bbox": ",".join(f"{v:.0f}" for v in p.box), **form})
    ids = sorted(s["id"] for s in client.get("/v1/shapes").json())
    root = post(bundle_tradeoff="1").json()
    assert sorted(root["bundle"]) == ids and root["candidates"] == len(ids) * 2541
    specific = post(bundle_tradeoff="0")
    if specific.status_code == 200:      # the single most likely class is one of the three shapes
        body = specific.json()
        assert len(body["bundle"]) == 1 and body["candidates"] == 2541 and body["matches"][0]["shape_id"] == body["bundle"][0]
    else:
        assert specific.status_code == 422 and "bundle" in specific.json()["detail"]
    for bad in ("1.5", "-0.1", "nan"):
        r = post(bundle_tradeoff=bad)
        assert r.status_code == 422 and r.json()["detail"], bad


def test_settings_that_turn_both_forms_off_turn_the_default_prior_off(engine_env, photos, monkeypatch):
    from shape_library import settings, warm_engine

    _, _, engine = engine_env
    p = photos[3]
    monkeypatch.setenv("SHAPESEARCH_SEARCH_PRIOR_RADIUS_DEG", "none")
    monkeypatch.setenv("SHAPESEARCH_SEARCH_PRIOR_WEIGHT", "none")
    settings.get_settings.cache_clear()
    try:
        img = Image.fromarray(p.image)
        off = warm_engine.search(engine, img, p.box, None, None, 3, False)
        assert off.candidates == 3 * 2541 and all(m.prior_deg is None for m in off.matches)
        if warm_engine.get_viewpoint_model() is not None:     # asked for explicitly: the tuned soft prior, no cut
            on = warm_engine.search(engine, img, p.box, None, None, 3, False, prior=True)
            assert on.candidates == 3 * 2541 and all(m.prior_deg is not None for m in on.matches)
    finally:
        settings.get_settings.cache_clear()


def test_a_restriction_with_nothing_indexed_is_a_422_naming_it(client, engine_env, photos):
    _, lib, _ = engine_env
    png = _png_bytes(photos[0].image)
    post = lambda **form: client.post("/v1/search", files={"image": ("p.png", png, "image/png")}, data=form)  # noqa: E731
    r = post(shape_ids="987654")
    assert r.status_code == 422 and r.json()["detail"] == "none of shape_ids is an indexed shape"
    sedan = next(s.id for s in lib.shapes() if s.name == "sedan")
    r = post(shape_ids=str(sedan), category="aeroplane")
    assert r.status_code == 422 and r.json()["detail"] == "none of shape_ids is an indexed shape of category 'aeroplane'"
