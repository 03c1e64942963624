import numpy as np
import trimesh

from conftest import marked_box
from shape_library.catalog import IndexStatus
from shape_library.grid import PoseGrid
from shape_library.index import ViewIndex, ViewIndexConfig
from shape_library.library import ShapeLibrary

CFG = ViewIndexConfig(grid=PoseGrid(4, 3, 2), canvas=64, crop=32)


def _library(tmp_path):
    lib = ShapeLibrary(tmp_path / "var")
    for name, mesh in [("box", marked_box()), ("cyl", trimesh.creation.cylinder(0.3, 1.5))]:
        f = tmp_path / "in" / f"{name}.ply"
        f.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(f)
        lib.add(f, name=name, category="misc")
    return lib


def test_sync_builds_each_shape_once_and_survives_restart(tmp_path):
    lib = _library(tmp_path)
    index = ViewIndex(tmp_path / "index", lib, CFG)
    built = index.sync(progress=False)
    assert sorted(built) == sorted(s.id for s in lib.shapes())
    assert all(s.index_status == IndexStatus.indexed.value for s in lib.shapes())
    views = index.load(built[0])
    assert views.crops.shape == (24, 32, 32) and views.poses.shape == (24, 3)
    assert (views.crops < 250).any(axis=(1, 2)).all()  # every view shows the shape
    assert np.allclose(views.poses, CFG.grid.poses())
    # A new process (new objects) finds the files and rebuilds nothing.
    again = ViewIndex(tmp_path / "index", ShapeLibrary(tmp_path / "var"), CFG)
    assert again.sync(progress=False) == []


def test_add_and_remove_touch_only_that_shape(tmp_path):
    lib = _library(tmp_path)
    index = ViewIndex(tmp_path / "index", lib, CFG)
    index.sync(progress=False)
    mtimes = {s.id: index.path(s.id).stat().st_mtime_ns for s in lib.shapes()}
    f = tmp_path / "in" / "sphere.ply"
    trimesh.creation.icosphere(2).export(f)
    new_id = lib.add(f, name="sphere", category="misc").shape.id
    assert index.sync(progress=False) == [new_id]
    gone = next(iter(mtimes))
    lib.remove(gone)
    assert index.sync(progress=False) == []
    assert not index.path(gone).exists()
    for sid, t in mtimes.items():
        if sid != gone:
            assert index.path(sid).stat().st_mtime_ns == t


def test_damaged_file_is_detected_and_rebuilt(tmp_path):
    lib = _library(tmp_path)
    index = ViewIndex(tmp_path / "index", lib, CFG)
    index.sync(progress=False)
    sid = lib.shapes()[0].id
    data = bytearray(index.path(sid).read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.path(sid).write_bytes(bytes(data))
    lib.set_status(sid, IndexStatus.pending)
    assert index.sync(progress=False) == [sid]
    assert index.load(sid).crops.shape[0] == 24


def test_changed_config_uses_a_new_key(tmp_path):
    lib = _library(tmp_path)
    a = ViewIndex(tmp_path / "index", lib, CFG)
    b = ViewIndex(tmp_path / "index", lib, ViewIndexConfig(grid=PoseGrid(3, 3, 2), canvas=64, crop=32))
    assert a.root != b.root


def test_codes_follow_each_shape_during_the_first_build(tmp_path):
    """A search during a long first build must find each rendered shape's codes on disk, not compute them."""
    import torch

    from models import checkpoint
    from models.matching import MatchingConfig, MatchingNet
    from shape_library.bootstrap import build_index_and_codes
    from shape_library.features import FeatureIndex
    from shape_library.settings import Settings

    lib = _library(tmp_path)
    views = ViewIndex(tmp_path / "index", lib, CFG)
    torch.manual_seed(0)
    model = MatchingNet(MatchingConfig(input_size=32, widths=(8, 8, 8, 8, 8), fusion_channels=8))
    weights = checkpoint.save(model, "matching-cpu", tmp_path / "w.pt")
    features = FeatureIndex(views, model, checkpoint.file_hash(weights))
    shapes = lib.shapes()
    seen = []

    def on_shape(done, total):
        seen.append((done, [views.has(s.id) for s in shapes], [features.path(s.id).is_file() for s in shapes]))

    build_index_and_codes(Settings(data_dir=tmp_path / "var", matching_weights=weights), views, on_shape, progress=False)
    assert [d for d, _, _ in seen] == [0, 1, 2]
    assert seen[0][1] == [False, False] and seen[-1][1] == [True, True]
    for _, has_views, has_codes in seen:
        assert has_codes == has_views


def test_views_keep_the_whole_outline_darker_than_the_background(tmp_path):
    """A face turned to the key light must not vanish into the white background (it did with the
    renderer's clipped colour: half the grid views lost over a fifth of their outline)."""
    from shape_library.index import render_crops
    from shape_library.render import OBJECT_MAX_GREY, Renderer, crop_square, mask_box

    lib = _library(tmp_path)
    mesh = lib.mesh(lib.shapes()[0].id)
    poses = CFG.grid.poses()
    lit = 0
    with Renderer(CFG.canvas) as r:
        crops, _ = render_crops(r, mesh, poses, CFG)
        for (a, e, t), crop in zip(poses, crops):
            res = r.render(mesh, float(a), float(e), float(t), CFG.distance)
            inside, _ = crop_square((res.mask * 255).astype(np.uint8), mask_box(res.mask), CFG.crop, CFG.margin, fill=(0,))
            inside = np.asarray(inside) == 255  # crop pixels wholly inside the silhouette
            assert inside.sum() > 20
            assert crop[inside].max() <= OBJECT_MAX_GREY
            lit += int((res.shading[res.mask] >= 1.0).any())
    assert lit > 0  # the case that used to vanish does occur among these views


def test_building_in_worker_processes_gives_the_same_files(tmp_path):
    """Index build on a many-core machine renders shapes in a process pool; it must store what one process stores."""
    lib = _library(tmp_path)
    serial = ViewIndex(tmp_path / "one", lib, CFG)
    pooled = ViewIndex(tmp_path / "pool", lib, CFG)
    assert sorted(serial.sync(progress=False)) == sorted(pooled.sync(progress=False, workers=2))
    assert all(s.index_status == IndexStatus.indexed.value for s in lib.shapes())
    for s in lib.shapes():
        a, b = serial.load(s.id), pooled.load(s.id)
        assert np.array_equal(a.crops, b.crops) and np.array_equal(a.boxes, b.boxes)
    assert pooled.sync(progress=False, workers=2) == []


def test_the_start_up_build_renders_in_as_many_processes_as_the_settings_say(monkeypatch):
    """A fresh install renders its library in a process pool (one per core by default), not in the API process."""
    from shape_library import bootstrap
    from shape_library.settings import Settings

    assert 1 <= Settings(index_workers=0).index_worker_count() <= 8
    assert Settings(index_workers=3).index_worker_count() == 3
    seen = {}

    class Views:
        library = None

        def sync(self, progress=True, on_shape=None, workers=1):
            seen["workers"] = workers
            return []

    monkeypatch.setattr(bootstrap, "feature_index_from_settings", lambda settings, views: None)
    bootstrap.build_index_and_codes(Settings(index_workers=5), Views(), progress=False)
    assert seen["workers"] == 5
