"""S3 rotation: the SO(3) render set, a tiny model that learns, the shipped model and the endpoint."""
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import marked_box
from models import checkpoint
from models.geometry import geodesic_distance, quaternion_to_matrix
from models.rotation import RotationConfig, RotationNet
from models.train_rotation import OBJECT_MAX, render_set, to_tensor
from shape_library.render import grey_on_white as on_white
from shape_library.library import ShapeLibrary
from shape_library.render import Renderer

WEIGHTS = checkpoint.WEIGHTS_DIR / "rotation.pt"


@pytest.fixture(scope="module")
def one_shape(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("so3")
    lib = ShapeLibrary(tmp / "var")
    f = tmp / "box.ply"
    marked_box().export(f)
    return lib, lib.add(f, name="box", category="misc").shape.id


def test_render_set_draws_each_rotation_it_reports(one_shape, tmp_path):
    lib, sid = one_shape
    data = render_set(lib, [sid], 6, seed=3, size=48, cache=tmp_path / "c.npz")
    again = render_set(lib, [sid], 6, seed=3, size=48, cache=tmp_path / "c.npz")
    assert data["images"].shape == (6, 48, 48) and np.array_equal(data["images"], again["images"])
    R = torch.from_numpy(data["rotations"]).double()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(6, 3, 3), atol=1e-5)
    # the image is the rendering under that rotation: re-render from the rotation's own Euler angles
    from models.geometry import matrix_to_euler

    a, e, t = (torch.rad2deg(v) for v in matrix_to_euler(R[2]))
    with Renderer(48) as r:
        res = r.render(lib.mesh(sid), float(a), float(e), float(t))
    img = on_white(res.shading, res.mask)
    assert np.abs(img.astype(int) - data["images"][2].astype(int)).mean() < 1.0
    # every object pixel stays darker than the white background, lit faces included
    assert (data["images"][data["images"] < 255] <= OBJECT_MAX).all() and (img[res.mask] < 255).all()


def test_inplane_augment_turns_the_label_with_the_picture(one_shape):
    """The turned view must look like a rendering at the rotation the augmentation reports, outline
    and shading alike (a wrong sign or order of Rz would give the opposite turn's; turning the grey
    picture instead of the normals would turn the light with it)."""
    from models.geometry import euler_to_matrix, matrix_to_euler
    from models.train_rotation import inplane_augment

    lib, sid = one_shape
    R = euler_to_matrix(torch.deg2rad(torch.tensor(40.0)), torch.deg2rad(torch.tensor(25.0)), torch.tensor(0.0))
    with Renderer(64) as r:
        def view(a, e, t):
            return r.render(lib.mesh(sid), a, e, t)

        base = view(40.0, 25.0, 0.0)
        normals = np.round(base.normals * 127).astype(np.int8)[None]
        turned, R2 = inplane_augment(normals, R[None].float().numpy(), np.random.default_rng(2))
        a, e, t = (float(torch.rad2deg(v)) for v in matrix_to_euler(torch.from_numpy(R2[0]).double()))
        assert abs(t) > 20  # the draw really turned it
        want, opposite = view(a, e, t), view(a, e, -t)
    assert abs(a - 40.0) < 1e-3 and abs(e - 25.0) < 1e-3
    obj = turned[0] < 255
    iou = lambda m: (obj & m).sum() / (obj | m).sum()  # noqa: E731
    assert iou(want.mask) > 0.9 > iou(opposite.mask)
    # the lights stay in the camera frame: the greys match the true rendering's where both show the object
    both = obj & want.mask
    grey_err = np.abs(turned[0][both].astype(int) - on_white(want.shading, want.mask)[both].astype(int))
    assert np.median(grey_err) <= 2 and grey_err.mean() < 12


def test_turn_normal_map_quarter_turns_are_exact():
    from shape_library.render import turn_normal_map

    n = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
    assert np.allclose(turn_normal_map(n, 0.0), n)
    q = turn_normal_map(n, 90.0)
    # a quarter turn counter-clockwise: the top row is the right column (top-right corner to top-left), each normal turned
    assert np.allclose(q[0, :, 0], -n[:, -1, 1], atol=1e-5) and np.allclose(q[0, :, 1], n[:, -1, 0], atol=1e-5)
    assert np.allclose(turn_normal_map(q, -90.0), n, atol=1e-5)
    assert np.allclose(turn_normal_map(q, 90.0), turn_normal_map(n, 180.0), atol=1e-5)


def test_turn_normal_map_batched_equals_one_map_at_a_time():
    from shape_library.render import turn_normal_map

    rng = np.random.default_rng(1)
    maps = rng.integers(-127, 128, (5, 12, 10, 3)).astype(np.int8)
    phi = rng.uniform(-180, 180, 5)
    batched = turn_normal_map(maps, phi)
    assert batched.shape == maps.shape
    for m, p, b in zip(maps, phi, batched):
        assert np.array_equal(turn_normal_map(m, float(p)), b)
    assert np.array_equal(turn_normal_map(maps, 30.0)[2], turn_normal_map(maps[2], 30.0))   # one angle for all


@pytest.mark.parametrize("head", ["exp", "direct"])
def test_a_tiny_model_learns_rotations_of_one_shape(one_shape, head):
    """Camera going round the shape (azimuth free, a little elevation): the full quaternion head learns it."""
    from models.geometry import euler_to_matrix

    lib, sid = one_shape
    rng = np.random.default_rng(0)

    def views(n):
        az = rng.uniform(0, 360, n)
        with Renderer(32) as r:
            imgs = np.stack([r.render(lib.mesh(sid), a, 15.0, 0.0).color[..., 0] for a in az])
        R = euler_to_matrix(torch.deg2rad(torch.tensor(az)), torch.deg2rad(torch.tensor(15.0)), torch.tensor(0.0))
        return imgs, R.float()

    xtr, Rtr = views(192)
    xte, Rte = views(32)
    torch.manual_seed(0)
    model = RotationNet(RotationConfig(input_size=32, widths=(8, 16, 16, 16, 16), hidden=64, head=head, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(250):
        idx = rng.integers(0, len(xtr), 64)
        loss = model.loss(to_tensor(xtr[idx]), Rtr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    q, R = model.predict(to_tensor(xte))
    assert torch.allclose(q.norm(dim=1), torch.ones(32), atol=1e-4) and bool((q[:, 0] >= 0).all())
    assert torch.allclose(R, quaternion_to_matrix(q.double()).float(), atol=1e-5)
    err = torch.rad2deg(geodesic_distance(R.double(), Rte.double()))
    assert float(err.median()) < 45, float(err.median())  # guessing one rotation of the circle: ~90°


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="rotation weights not trained yet")
def test_rotation_endpoint(data_dir):
    from service.app import create_app

    with Renderer(128) as r:
        img = r.render(marked_box(), 40.0, 25.0, 10.0).color
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    client = TestClient(create_app())
    res = client.post("/v1/rotation", files={"image": ("r.png", buf.getvalue(), "image/png")})
    assert res.status_code == 200, res.text
    body = res.json()
    q, M = torch.tensor(body["quaternion"]), torch.tensor(body["matrix"])
    assert abs(float(q.norm()) - 1) < 1e-4 and q[0] >= 0
    assert torch.allclose(M, quaternion_to_matrix(q.double()).float(), atol=1e-4)
    assert torch.allclose(M @ M.T, torch.eye(3), atol=1e-4)
    assert client.post("/v1/rotation", files={"image": ("r.png", b"GIF89a....", "image/gif")}).status_code == 415
    assert WEIGHTS.stat().st_size < 30 * 2**20 and "rerun" in WEIGHTS.with_suffix(".md").read_text()


def test_brightness_augment_keeps_the_background_white_and_the_object_visible():
    from models.train_rotation import brightness_augment

    img = np.full((2, 16, 16), 255, np.uint8)
    img[:, 4:12, 4:12] = OBJECT_MAX
    img[:, 6, 6] = 10
    out = brightness_augment(img, np.random.default_rng(0))
    assert (out[img == 255] == 255).all() and (out[img < 255] < 255).all()
    assert len({int(o[5, 5]) for o in out}) == 2  # each image drew its own gain
