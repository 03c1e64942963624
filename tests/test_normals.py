"""S2 surface normals: the dense S_exp head, the scene generator, a tiny training run and the endpoint."""
import io

import numpy as np
import pytest
import torch
import trimesh
from fastapi.testclient import TestClient
from PIL import Image

from conftest import marked_box
from models import checkpoint
from models.normals import DenseSphericalHead, NormalsConfig, NormalsNet, angular_error_deg, from_head, to_head
from models.spherical import S2_SIGNS
from shape_library.library import ShapeLibrary
from shape_library.scenes import GROUND, MIXED, OBJECT, WALL, SceneConfig, SceneGenerator


def _unit_normals(*shape) -> torch.Tensor:
    n = torch.nn.functional.normalize(torch.randn(*shape, 3), dim=-1)
    n[..., 2] = n[..., 2].abs() + 1e-3   # facing the viewer
    return torch.nn.functional.normalize(n, dim=-1)


def test_dense_exp_head_decodes_signs_per_pixel_and_outputs_unit_normals():
    torch.manual_seed(0)
    n = _unit_normals(2, 5, 7)
    y = to_head(n)
    assert (y[..., 2] < 0).all() and torch.allclose(from_head(y), n, atol=1e-6)
    assert torch.allclose(y.norm(dim=-1), torch.ones(2, 5, 7), atol=1e-5)
    # the ground seen from above (n = (0, c, s)) sits away from the sign boundaries in the head frame
    g = to_head(torch.tensor([0.0, 0.8, 0.6]))
    assert g[0] < -0.5 and g[1] > 0.5
    # the sign classes of every pixel round-trip through S2_SIGNS
    cls = S2_SIGNS.encode(y)
    assert cls.shape == (2, 5, 7) and int(cls.max()) < 4
    assert torch.allclose(S2_SIGNS.decode(y.abs(), cls), y)
    # a dense head with all-zero weights: |p| = (1, 1, 1) / sqrt(3) and sign class 0 at every pixel
    head = DenseSphericalHead(4, "exp")
    with torch.no_grad():
        head.raw.weight.zero_(), head.raw.bias.zero_()
        head.sign_logits.weight.zero_(), head.sign_logits.bias.zero_()
    feats = torch.randn(2, 4, 5, 7)
    out = head(feats)
    assert out["pred"].shape == (2, 5, 7, 3) and out["sign_logits"].shape == (2, 5, 7, 4)
    assert torch.allclose(out["pred"].norm(dim=-1), torch.ones(2, 5, 7), atol=1e-5)
    assert torch.allclose(out["pred"], torch.tensor([1.0, 1.0, -1.0]).expand(2, 5, 7, 3) / 3**0.5, atol=1e-5)
    # any raw output -> unit vectors with N_z < 0 (head convention); the model's predict flips z back
    model = NormalsNet(NormalsConfig(head="exp", widths=(4, 8, 8, 8), full_width=4)).eval()
    pred = model.predict(torch.rand(1, 3, 32, 48) - 0.5)
    assert pred.shape == (1, 32, 48, 3)
    assert torch.allclose(pred.norm(dim=-1), torch.ones(1, 32, 48), atol=1e-5) and (pred[..., 2] > 0).all()
    # the loss is minimal (-1, no CE) for the exact |y| and confident right signs
    abs_y = y.abs()
    logits = torch.nn.functional.one_hot(cls, 4).float() * 50
    loss = head.loss({"abs": abs_y, "sign_logits": logits}, y, torch.ones(2, 5, 7, dtype=torch.bool))
    assert abs(float(loss) + 1.0) < 1e-4


@pytest.mark.parametrize("kind", ["flat", "direct"])
def test_baseline_heads_ignore_masked_pixels(kind):
    head = DenseSphericalHead(3, kind)
    y = to_head(_unit_normals(1, 4, 4))
    out = {"pred": y.clone()}
    out["pred"][0, 0, 0] = -y[0, 0, 0]         # one wrong pixel, masked out
    m = torch.ones(1, 4, 4, dtype=torch.bool)
    m[0, 0, 0] = False
    best = -1.0 if kind == "flat" else 0.0
    assert abs(float(head.loss(out, y, m)) - best) < 1e-6


@pytest.fixture(scope="module")
def two_shapes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("normals")
    folder = tmp / "meshes" / "misc"
    folder.mkdir(parents=True)
    marked_box().export(folder / "box.ply")
    trimesh.creation.cylinder(radius=0.4, height=1.2, sections=24).export(folder / "can.ply")
    lib = ShapeLibrary(tmp / "var")
    ids = [lib.add(folder / f, name=f.split(".")[0], category="misc").shape.id for f in ("box.ply", "can.ply")]
    return tmp, lib, ids


def test_scenes_are_deterministic_with_unit_normals_and_an_exact_ground(two_shapes):
    _, lib, ids = two_shapes
    cfg = SceneConfig(size=48, p_walls=1.0)
    with SceneGenerator(lib, ids, seed=3, config=cfg) as gen:
        a = [gen.scene(i) for i in (0, 1, 2)]
        again = gen.scene(1)
    with SceneGenerator(lib, ids, seed=3, config=cfg) as gen2:
        b = gen2.scene(2)
    assert np.array_equal(a[1].image, again.image) and np.array_equal(a[1].normals, again.normals)
    assert np.array_equal(a[2].image, b.image) and np.array_equal(a[2].mask, b.mask)
    assert not np.array_equal(a[0].image, a[1].image)
    for s in a:
        assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8
        n = s.normals[s.mask]
        assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)
        assert np.all(s.normals[~s.mask] == 0)
        # facing the viewer: n . ray < 0 for the pixel's viewing ray (camera looks along -z)
        assert (n[:, 2] > -0.3).all()
        R = s.rotation
        ground = s.labels == GROUND
        assert ground.sum() > 50
        up = R @ np.array([0.0, 0.0, 1.0])        # the ground's normal, library +z, in the camera frame
        err = np.degrees(np.arccos(np.clip(s.normals[ground] @ up, -1, 1)))
        assert err.max() < 1.5, err.max()
        assert ((s.labels >= OBJECT) & (s.labels != MIXED)).any()
        walls = s.labels == WALL
        if walls.any():   # a vertical plane: its normal is orthogonal to the ground's
            assert np.abs(s.normals[walls] @ up).max() < 0.03


def test_a_tiny_training_run_reduces_the_loss(two_shapes, tmp_path):
    from models import train_normals

    tmp, _, _ = two_shapes
    args = train_normals.parse_args([
        "--library", str(tmp / "meshes"), "--data-dir", str(tmp_path / "var"), "--scenes", "12", "--eval-scenes", "2",
        "--size", "32", "--steps", "40", "--batch", "4", "--lr", "0.005", "--heads", "exp,flat", "--threads", "1",
        "--no-reports", "--no-progress", "--no-default-library"])
    results = train_normals.run(args)
    for head in ("exp", "flat"):
        r = results[head]
        assert r["loss_last"] < r["loss_first"], (head, r)
        assert r["all surface pixels"]["pixels"] > 0 and 0 <= r["all surface pixels"]["median_deg"] <= 180
    assert list((tmp_path / "var").glob("scenes-train-*.npz"))   # the data cache


@pytest.fixture()
def tiny_weights(tmp_path, monkeypatch, data_dir):
    from shape_library import settings, warm_engine

    model = NormalsNet(NormalsConfig(input_size=32, widths=(4, 8, 8, 8), full_width=4)).eval()
    path = checkpoint.save(model, "normals-cpu", tmp_path / "normals.pt")
    monkeypatch.setenv("SHAPESEARCH_NORMALS_WEIGHTS", str(path))
    settings.get_settings.cache_clear()
    warm_engine.reset_models()
    yield path
    warm_engine.reset_models()
    settings.get_settings.cache_clear()


def _png(w: int = 80, h: int = 60) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_normals_endpoint_png_npy_and_errors(tiny_weights):
    from service.app import create_app

    client = TestClient(create_app())
    res = client.post("/v1/normals", files={"image": ("p.png", _png(), "image/png")})
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "image/png" and res.headers["x-model-resolution"] == "32x24"
    im = Image.open(io.BytesIO(res.content))
    assert im.mode == "RGB" and im.size == (80, 60)
    res = client.post("/v1/normals", files={"image": ("p.png", _png(), "image/png")}, data={"format": "npy"})
    assert res.status_code == 200 and res.headers["content-type"] == "application/octet-stream"
    n = np.load(io.BytesIO(res.content))
    assert n.dtype == np.float32 and n.shape == (60, 80, 3)
    assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)
    # the PNG is the colour code of the same array
    rgb = np.asarray(im).astype(np.float32)
    assert np.abs(rgb / 127.5 - 1.0 - n).max() < 0.01
    res = client.post("/v1/normals", files={"image": ("p.png", _png(), "image/png")}, data={"format": "exr"})
    assert res.status_code == 422 and "exr" in res.json()["detail"]
    assert client.post("/v1/normals", files={"image": ("p.gif", b"GIF89a....", "image/gif")}).status_code == 415
    assert client.post("/v1/normals", files={"image": ("p.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}).status_code in (415, 422)
    assert client.post("/v1/normals", data={"format": "png"}).status_code == 422


def test_normals_endpoint_503_without_weights(data_dir, tmp_path, monkeypatch):
    from service.app import create_app
    from shape_library import settings, warm_engine

    monkeypatch.setenv("SHAPESEARCH_NORMALS_WEIGHTS", str(tmp_path / "absent.pt"))
    settings.get_settings.cache_clear()
    warm_engine.reset_models()
    try:
        res = TestClient(create_app()).post("/v1/normals", files={"image": ("p.png", _png(), "image/png")})
        assert res.status_code == 503 and "normals weights" in res.json()["detail"]
    finally:
        warm_engine.reset_models()
        settings.get_settings.cache_clear()


def test_angular_error():
    a = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(angular_error_deg(a, b), torch.tensor([45.0, 0.0]), atol=1e-3)
