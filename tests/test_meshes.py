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


def _zip(members: dict[str, bytes], method=None) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method or zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_archive_with_one_mesh_and_its_material_loads():
    box = trimesh.creation.box(extents=[1, 2, 3])
    data = _zip({"car/model.obj": _obj(box), "car/model.mtl": b"newmtl a\nKd 1 0 0\n", "car/readme.txt": b"cc-by"})
    m = meshes.load_mesh(data, "zip")
    assert len(m.faces) == 12 and np.allclose(sorted(m.extents), [1, 2, 3])


def test_zip_archive_gltf_reads_its_bin_buffer_from_the_archive():
    box = trimesh.creation.box(extents=[1, 1, 2])
    files = trimesh.exchange.gltf.export_gltf(trimesh.Scene(box))    # model.gltf + gltf_buffer_0.bin
    assert any(n.endswith(".bin") for n in files)
    m = meshes.load_mesh(_zip({f"m/{n}": d for n, d in files.items()}), "zip")
    assert len(m.faces) == 12


@pytest.mark.parametrize(
    "members, message",
    [
        ({"../../etc/evil.obj": b"v 0 0 0\n"}, "unsafe path"),
        ({"/abs/evil.obj": b"v 0 0 0\n"}, "unsafe path"),
        ({"bomb.obj": b"\0" * (20 * 2**20)}, "zip bomb"),
        ({"a.obj": b"v 0 0 0\n", "b.stl": b"solid x\n"}, "exactly one mesh file"),
        ({"notes.txt": b"no mesh here"}, "exactly one mesh file.*found 0"),
    ],
)
def test_hostile_zip_archives_are_rejected_with_the_reason(members, message):
    with pytest.raises(MeshError, match=message):
        meshes.load_mesh(_zip(members), "zip")


def test_truncated_or_fake_zip_is_rejected():
    good = _zip({"m.obj": _obj(trimesh.creation.box())})
    for data in (b"PK\x03\x04 not really", good[: len(good) // 2]):
        with pytest.raises(MeshError, match="zip|unreadable"):
            meshes.load_mesh(data, "zip")


def test_gltf_in_an_archive_cannot_reach_other_files():
    gltf = b'{"asset":{"version":"2.0"},"buffers":[{"uri":"../../../etc/passwd","byteLength":10}]}'
    with pytest.raises(MeshError):
        meshes.load_mesh(_zip({"m/model.gltf": gltf}), "zip")
