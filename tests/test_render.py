import numpy as np
import pytest
import trimesh

from conftest import marked_box
from shape_library import camera as cam
from shape_library.camera import Intrinsics
from shape_library.render import Renderer, crop_square, mask_box


@pytest.fixture(scope="module")
def renderer():
    with Renderer(128) as r:
        yield r


@pytest.mark.parametrize("pose", [(0, 0, 0), (37, 20, 10), (200, -35, -120), (300, 70, 45)])
def test_silhouette_box_matches_projected_mesh(renderer, pose):
    mesh = marked_box()
    res = renderer.render(mesh, *pose, distance=3.0)
    uv = cam.project(mesh.vertices, *pose, 3.0, res.intrinsics)
    expected = (uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max())
    got = mask_box(res.mask)
    assert np.allclose(got, expected, atol=1.0), (got, expected)


def test_pose_zero_sees_front_upright(renderer):
    res = renderer.render(marked_box(), 0, 0, 0, distance=3.0)
    ys, xs = np.nonzero(res.mask)
    assert np.ptp(ys) > 1.8 * np.ptp(xs)  # tall box stands upright in the image
    # The knob on the front face is nearer the camera, and in the upper half of the image.
    depth = np.where(res.mask, res.depth, np.inf)
    near_rows = np.nonzero(depth < depth.min() + 0.01)[0]
    assert near_rows.mean() < res.mask.shape[0] / 2
    # The face we look at has its normal towards the camera (+z of the camera frame).
    centre = res.normals[np.nonzero(res.mask)].mean(axis=0)
    assert centre[2] > 0.9


def test_other_views(renderer):
    # From behind (a=180) the knob is hidden: the nearest surface is flat.
    back = renderer.render(marked_box(), 180, 0, 0, distance=3.0)
    d = back.depth[back.mask]
    assert np.ptp(d) < 0.02
    # From above (e=90 - half a bin) the box's top face fills the view, seen as a small square.
    top = renderer.render(marked_box(), 0, 85, 0, distance=3.0)
    ys, xs = np.nonzero(top.mask)
    assert np.ptp(ys) < 0.6 * np.ptp(xs) * 2 and top.normals[top.mask][:, 2].mean() > 0.8
    # In-plane rotation of 90 degrees turns the tall box on its side.
    side = renderer.render(marked_box(), 0, 0, 90, distance=3.0)
    ys, xs = np.nonzero(side.mask)
    assert np.ptp(xs) > 1.8 * np.ptp(ys)


def test_normals_depth_mask_agree(renderer):
    res = renderer.render(trimesh.creation.icosphere(subdivisions=3, radius=0.8), 10, 10, 0, distance=3.0)
    n = res.normals[res.mask]
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-3)
    assert (n[:, 2] > -0.05).all()  # every visible normal faces the viewer
    assert (res.depth[~res.mask] == 0).all() and (res.depth[res.mask] > 0).all()
    assert (res.color[~res.mask] == 255).all()
    assert res.shading[res.mask].std() > 0.05  # shaded, not flat


def test_crop_square_returns_box(renderer):
    res = renderer.render(marked_box(), 30, 10, 0, distance=3.0)
    box = mask_box(res.mask)
    crop, sq = crop_square(res.color, box, 64, margin=0.1)
    assert crop.size == (64, 64)
    assert np.isclose(sq[2] - sq[0], sq[3] - sq[1])
    side = max(box[2] - box[0], box[3] - box[1]) * 1.2
    assert np.isclose(sq[2] - sq[0], side)
    arr = np.asarray(crop)
    assert (arr[0] == 255).all() and (arr[:, 0] == 255).all()  # margin is background
    assert (arr < 255).any()


def test_custom_intrinsics_canvas(renderer):
    K = Intrinsics(160, 96, 150.0, 150.0, 80.0, 48.0)
    res = renderer.render(marked_box(), 0, 0, 90, distance=4.0, intrinsics=K)
    assert res.mask.shape == (96, 160)
    uv = cam.project(marked_box().vertices, 0, 0, 90, 4.0, K)
    assert np.allclose(mask_box(res.mask), (uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()), atol=1.0)


def test_renderers_share_one_context_across_threads_and_close():
    """Closing one renderer must not break another (pyrender's EGL delete terminates the display)."""
    import threading

    first = Renderer(64)
    with Renderer(64) as other:
        other.render(marked_box(), 0, 0, 0)
    errors = []

    def work(seed):
        try:
            r = Renderer(48 + 16 * seed)
            for k in range(20):
                assert r.render(marked_box(), 17.0 * k + seed, 10, 0).mask.any()
        except Exception as exc:  # collected for the main thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert first.render(marked_box(), 0, 0, 0).mask.shape == (64, 64)


def test_gl_renderer_name_leaves_the_context_usable():
    import trimesh

    from shape_library.render import Renderer, gl_renderer_name

    name = gl_renderer_name()
    assert isinstance(name, str) and name and name != "unknown"
    with Renderer(32) as r:
        out = r.render(trimesh.creation.box(), 30.0, 10.0, 0.0, 3.0)
    assert out is not None
