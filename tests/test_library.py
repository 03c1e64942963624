import json

import numpy as np
import pytest
import trimesh

from shape_library.importers import SHAPENET_TO_LIBRARY, detect_layout, import_folder
from shape_library.library import ShapeLibrary
from shape_library.meshes import MeshError


def _write(path, mesh):
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path


def test_same_file_twice_is_stored_once(tmp_path):
    lib = ShapeLibrary(tmp_path / "var")
    f = _write(tmp_path / "in" / "box.ply", trimesh.creation.box(extents=[1, 2, 3]))
    a = lib.add(f, name="box", category="misc")
    b = lib.add(f, name="box again", category="misc")
    assert a.created and not b.created and a.shape.id == b.shape.id
    assert len(lib.shapes()) == 1
    assert lib.shapes()[0].faces == 12


def test_manifest_importer_applies_rotation(tmp_path):
    # A tall box (along file y) declared "+Y up": the importer must stand it along +z.
    src = tmp_path / "lib"
    _write(src / "thing" / "tall.obj", trimesh.creation.box(extents=[1, 4, 2]))
    manifest = {"shapes": [{
        "file": "thing/tall.obj", "category": "thing", "name": "tall", "subtype": "tall box",
        "to_library_rotation": [[1, 0, 0], [0, 0, -1], [0, 1, 0]], "license": "CC0-1.0",
    }]}
    (src / "MANIFEST.json").write_text(json.dumps(manifest))
    assert detect_layout(src) == "manifest"
    lib = ShapeLibrary(tmp_path / "var")
    report = import_folder(lib, src, progress=False)
    assert len(report.added) == 1 and not report.errors
    ext = lib.mesh(report.added[0]).extents
    assert ext[2] > ext[1] > ext[0]
    shape = lib.get(report.added[0])
    assert (shape.category, shape.subtype, shape.license) == ("thing", "tall box", "CC0-1.0")


def test_layouts_detected_and_imported(tmp_path):
    box = trimesh.creation.box(extents=[1, 2, 3])
    tree = tmp_path / "tree"
    _write(tree / "car" / "a.stl", box)
    _write(tree / "boat" / "b.off", trimesh.creation.icosphere(1))
    (tree / "boat" / "notes.txt").write_text("not a mesh")
    modelnet = tmp_path / "ModelNet10"
    _write(modelnet / "chair" / "train" / "chair_0001.off", box)
    _write(modelnet / "chair" / "test" / "chair_0900.off", trimesh.creation.cylinder(0.5, 1))
    shapenet = tmp_path / "ShapeNetCore"
    _write(shapenet / "02958343" / "abc123" / "models" / "model_normalized.obj", box)
    pascal = tmp_path / "PASCAL3D+"
    _write(pascal / "CAD" / "car" / "01.off", box)
    lib = ShapeLibrary(tmp_path / "var")
    expected = {tree: ("tree", 2), modelnet: ("modelnet", 2), shapenet: ("shapenet", 1), pascal: ("pascal3d", 1)}
    for folder, (layout, n) in expected.items():
        assert detect_layout(folder) == layout
        report = import_folder(lib, folder, progress=False)
        assert len(report.added) + len(report.existing) == n, (layout, report)
    cats = {s.category for s in lib.shapes()}
    assert {"car", "boat", "chair"} <= cats
    sn = next(s for s in lib.shapes() if s.name == "abc123")
    assert sn.category == "car"
    # ShapeNet (+y up, front -z): the box's 2-long y axis becomes library z
    assert np.allclose(lib.mesh(sn.id).extents / lib.mesh(sn.id).extents.max(), np.array([1, 3, 2]) / 3, atol=1e-6)
    assert np.isclose(np.linalg.det(SHAPENET_TO_LIBRARY), 1)
    assert SHAPENET_TO_LIBRARY @ np.array([0, 0, -1]) @ np.array([0, -1, 0]) == 1  # front -z -> -y


def test_broken_file_in_folder_is_reported_not_fatal(tmp_path):
    tree = tmp_path / "tree"
    _write(tree / "car" / "good.ply", trimesh.creation.box())
    (tree / "car" / "bad.obj").write_text("garbage that is no mesh\n")
    lib = ShapeLibrary(tmp_path / "var")
    report = import_folder(lib, tree, progress=False)
    assert len(report.added) == 1
    assert len(report.errors) == 1 and "bad.obj" in report.errors[0][0]


def test_remove_shape(tmp_path):
    lib = ShapeLibrary(tmp_path / "var")
    f = _write(tmp_path / "in" / "box.ply", trimesh.creation.box())
    sid = lib.add(f, name="box", category="misc").shape.id
    assert lib.remove(sid) is not None
    assert lib.shapes() == [] and not any(lib.meshes_dir.iterdir())
    with pytest.raises(MeshError):
        lib.add(f, name="  ", category="misc")


def test_shared_manifest_rotation_puts_airliner_upright(tmp_path, shared_library):
    lib = ShapeLibrary(tmp_path / "var")
    report = import_folder(lib, shared_library, categories={"aeroplane"}, progress=False)
    assert not report.errors
    plane = next(s for s in lib.shapes() if s.name == "a340_500")
    ext = lib.mesh(plane.id).extents
    # wide-body airliner: long fuselage (y) and wide wings (x) both far exceed its height (z)
    assert ext[2] < 0.5 * min(ext[0], ext[1])
