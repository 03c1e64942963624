import io

import numpy as np
import pytest
import trimesh

from shape_library import meshes
from shape_library.meshes import MeshError


def _obj(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.obj.export_obj(mesh).encode()


def test_normalise_centres_and_scales():
    m = trimesh.creation.box(extents=[4, 2, 1])
    m.apply_translation([10, -3, 7])
    n = meshes.normalise(m)
    lo, hi = n.bounds
    assert np.allclose((lo + hi) / 2, 0, atol=1e-9)
    assert np.isclose(np.linalg.norm(n.vertices, axis=1).max(), 1.0)


def test_normalise_applies_rotation():
    m = trimesh.creation.box(extents=[1, 2, 3])  # longest along z
    R = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)  # z -> -y
    n = meshes.normalise(m, R)
    ext = n.extents
    assert ext[1] > ext[2] > ext[0]
    with pytest.raises(MeshError, match="rotation"):
        meshes.normalise(m, np.diag([1.0, 1.0, -1.0]))  # a reflection


@pytest.mark.parametrize(
    "data, ftype, message",
    [
        (b"", "obj", "empty"),
        (b"this is not a mesh at all", "stl", "unreadable|no faces"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "obj", "no faces|no triangle"),
        (b"OFF\n3 1 0\n0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n", "off", "NaN|unreadable"),
        (b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "obj", "degenerate|no faces"),
    ],
)
def test_broken_meshes_give_clear_errors(data, ftype, message):
    with pytest.raises(MeshError, match=message):
        meshes.load_mesh(data, ftype)


def test_face_limit_and_unknown_format():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    with pytest.raises(MeshError, match="over the limit"):
        meshes.load_mesh(_obj(sphere), "obj", max_faces=100)
    with pytest.raises(MeshError, match="unsupported mesh format"):
        meshes.load_mesh(b"xx", "fbx")


def test_glb_round_trip_is_the_normalised_mesh():
    n = meshes.normalise(trimesh.creation.icosphere(subdivisions=1))
    back = trimesh.load(io.BytesIO(meshes.to_glb(n)), file_type="glb", force="mesh")
    assert len(back.faces) == len(n.faces)
    assert np.allclose(np.sort(back.vertices, axis=0), np.sort(n.vertices, axis=0), atol=1e-6)
