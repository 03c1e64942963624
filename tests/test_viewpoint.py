"""S1 viewpoint: angle coding, the mirror augmentation's geometry, training signal, the shipped model and the endpoint."""
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image

from conftest import marked_box
from models import checkpoint
from models.train_viewpoint import mirror
from models.viewpoint import ViewpointConfig, ViewpointNet, angles_to_targets, geodesic_deg, targets_to_angles
from shape_library.render import Renderer

WEIGHTS = checkpoint.WEIGHTS_DIR / "viewpoint.pt"


@hsettings(max_examples=60, deadline=None)
@given(st.floats(0, 359.9), st.floats(-89.9, 89.9), st.floats(-179.9, 179.9), st.sampled_from([0.0, 45.0]))
def test_angles_survive_the_shifted_circle_coding(a, e, t, shift):
    ang = torch.tensor([[a, e, t]], dtype=torch.float64)
    back = targets_to_angles(angles_to_targets(ang, shift), shift)
    assert float(geodesic_deg(back, ang)[0]) < 1e-3


def test_the_45_degree_shift_moves_common_angles_off_the_sign_boundaries():
    """Upright photos (theta = 0, elevation ~ 0) and axis-aligned azimuths sit exactly where cos or sin
    changes sign; shifted by 45 degrees they sit in the middle of a sign class."""
    common = torch.tensor([[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [180.0, 0.0, 0.0], [270.0, 0.0, 0.0]])
    assert angles_to_targets(common, 0.0).abs().min() < 1e-6
    assert angles_to_targets(common, 45.0).abs().min() > 0.7


def test_mirrored_photo_of_a_symmetric_object_is_the_mirrored_pose():
    mesh = marked_box()  # symmetric about the x = 0 plane
    with Renderer(64) as r:
        for a, e, t in [(30.0, 15.0, 10.0), (200.0, -20.0, -40.0)]:
            first = r.render(mesh, a, e, t).mask
            crops, poses = mirror(first[None, :, :, None].astype(np.uint8), np.array([[a, e, t, 3.0]]))
            second = r.render(mesh, *poses[0, :3]).mask
            inter = np.logical_and(crops[0, ..., 0] > 0, second).sum()
            union = np.logical_or(crops[0, ..., 0] > 0, second).sum()
            assert inter / union > 0.97


@pytest.mark.parametrize("head", ["exp", "flat", "direct"])
def test_a_small_model_learns_the_azimuth_of_rendered_views(head):
    """Trained briefly on renders of one shape, each head beats chance on renders at unseen azimuths."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mesh = marked_box()
    with Renderer(32) as r:
        def views(az):
            return np.stack([np.repeat(r.render(mesh, a, 10.0, 0.0).color[..., :1], 3, -1) for a in az])

        train_az = rng.uniform(0, 360, 96)
        test_az = rng.uniform(0, 360, 24)
        xtr, xte = views(train_az), views(test_az)
    to_x = lambda c: torch.from_numpy(c).permute(0, 3, 1, 2).float() / 255 - 0.5  # noqa: E731
    poses = lambda az: torch.tensor(np.stack([az, np.full_like(az, 10.0), np.zeros_like(az)], 1)).float()  # noqa: E731
    model = ViewpointNet(ViewpointConfig(input_size=32, widths=(8, 16, 16, 16, 16), hidden=32, categories=("misc",), head=head, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(250):
        loss = model.loss(to_x(xtr), poses(train_az), ["misc"] * len(train_az))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    pred, conf = model.predict(to_x(xte), ["misc"] * len(test_az))
    err = np.abs((pred[:, 0].numpy() - test_az + 180) % 360 - 180)
    assert np.median(err) < 45, (head, np.median(err))  # chance: 90
    assert conf.shape == (24,) and float(conf.min()) >= 0 and float(conf.max()) <= 1


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="viewpoint weights not trained yet")
def test_shipped_model_card_and_size():
    assert WEIGHTS.stat().st_size < 30 * 2**20
    card = WEIGHTS.with_suffix(".md").read_text()
    assert "seed" in card and "Acc@π/6" in card and "rerun" in card
    model, _ = checkpoint.load(WEIGHTS)
    assert model.config.head == "exp" and set(model.config.categories) == {"aeroplane", "boat", "car"}


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="viewpoint weights not trained yet")
def test_viewpoint_endpoint(data_dir):
    from service.app import create_app

    with Renderer(160) as r:
        res = r.render(marked_box(), 60.0, 20.0, 0.0)
    buf = io.BytesIO()
    Image.fromarray(res.color).save(buf, "PNG")
    client = TestClient(create_app())
    ok = client.post("/v1/viewpoint", files={"image": ("p.png", buf.getvalue(), "image/png")},
                     data={"bbox": "20,20,140,140", "category": "car"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert 0 <= body["azimuth"] < 360 and -90 <= body["elevation"] <= 90 and -180 <= body["theta"] < 180
    assert 0 <= body["confidence"] <= 1 and body["category_head"] == "car"
    generic = client.post("/v1/viewpoint", files={"image": ("p.png", buf.getvalue(), "image/png")})
    assert generic.status_code == 200 and generic.json()["category_head"] == "*"
    bad = client.post("/v1/viewpoint", files={"image": ("p.png", buf.getvalue(), "image/png")}, data={"category": "teapot"})
    assert bad.status_code == 422 and "teapot" in bad.json()["detail"]
    assert client.post("/v1/viewpoint", files={"image": ("p.png", b"zz", "image/png")}).status_code == 415


def test_poses_near_keeps_the_grid_poses_around_the_prediction_and_its_flip():
    from models.pairs import grid_rotations
    from models.viewpoint import poses_near
    from shape_library.grid import PoseGrid

    grid = PoseGrid()
    R = grid_rotations(grid).double()
    pred = torch.tensor([100.0, 10.0, 5.0])
    near = set(poses_near(R, pred, 30.0, flips=False).tolist())
    both = set(poses_near(R, pred, 30.0, flips=True).tolist())
    assert int(grid.nearest_index(100.0, 10.0, 5.0)) in near and near < both
    assert int(grid.nearest_index(280.0, 10.0, 5.0)) in both - near
    err = geodesic_deg(torch.from_numpy(grid.poses(np.array(sorted(near)))).double(), pred.double()[None].expand(len(near), 3))
    assert float(err.max()) <= 30.0 + 1e-6
    assert len(poses_near(R, pred, 180.0, flips=False)) == len(grid)


def test_merge_mirrored_means_agreeing_answers_and_keeps_the_confident_one_otherwise():
    from models.viewpoint import merge_mirrored

    a = torch.tensor([[350.0, 10.0, 5.0], [10.0, 0.0, 0.0]])
    b = torch.tensor([[10.0, 20.0, -5.0], [190.0, 0.0, 0.0]])     # row 1: the front/back flip
    merged, conf = merge_mirrored(a, torch.tensor([0.5, 0.5]), b, torch.tensor([0.4, 0.9]))
    assert torch.allclose(merged[0], torch.tensor([0.0, 15.0, 0.0]), atol=1e-4)   # across 0/360, in [0, 360)
    assert 0.0 <= float(merged[0, 0]) < 360.0
    assert torch.equal(merged[1], b[1]) and float(conf[1]) == pytest.approx(0.9)


def test_the_mirror_averaged_prediction_merges_the_photo_and_its_mirror_and_is_mirror_equivariant():
    from models.viewpoint import merge_mirrored, mirror_angles

    torch.manual_seed(0)
    model = ViewpointNet(ViewpointConfig(input_size=32, widths=(8, 16, 16, 16, 16), hidden=32, categories=("car",))).eval()
    x = torch.rand(6, 3, 32, 32) - 0.5
    cats = ["car", None, "car", "boat", "car", None]
    a, ca = model.predict(x, cats, mirror=False)
    b, cb = model.predict(x.flip(-1), cats, mirror=False)
    merged, conf = model.predict(x, cats)
    want, want_conf = merge_mirrored(a, ca, mirror_angles(b), cb)
    assert torch.allclose(merged, want) and torch.allclose(conf, want_conf)
    of_mirror, _ = model.predict(x.flip(-1), cats)
    assert float(geodesic_deg(of_mirror, mirror_angles(merged)).max()) < 1e-3
