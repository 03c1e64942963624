"""The training command end to end on a tiny configuration (a short run CI can afford)."""
import json

import numpy as np
import torch

from models import checkpoint
from models.pairs import PairSampling, grid_rotations, pose_rotations, sample_pairs
from models.train_matching import main
from shape_library.grid import PoseGrid


def test_pairs_are_stratified_and_targets_are_geodesic():
    grid = PoseGrid(21, 11, 11)
    g = grid_rotations(grid)
    photo = pose_rotations(np.array([[33.0, 12.0, 4.0], [250.0, -15.0, -8.0]]))
    cfg = PairSampling()
    shapes, poses, t = sample_pairs(photo, np.array([1, 2]), g, {1: [1, 5], 2: [2, 6]}, np.random.default_rng(0), cfg)
    deg = np.degrees(t.numpy())
    assert shapes.shape == poses.shape == t.shape == (2, cfg.per_photo)
    own = slice(0, cfg.near + cfg.close + cfg.far)
    assert (deg[:, : cfg.near] < cfg.near_deg).all()
    assert ((deg[:, cfg.near : cfg.near + cfg.close] >= cfg.near_deg) & (deg[:, cfg.near : cfg.near + cfg.close] < cfg.close_deg)).all()
    assert (deg[:, cfg.near + cfg.close : cfg.near + cfg.close + cfg.far] >= cfg.close_deg).all()
    assert (shapes[:, own] == np.array([[1], [2]])).all()
    # a different shape's rendering gets the pose distance plus the penalty
    from models import geometry

    d = np.degrees(geometry.geodesic_distance(photo[0:1], g[poses[0, -1:]]).numpy())
    assert shapes[0, -1] == 5 and np.isclose(deg[0, -1], min(180.0, d[0] + cfg.mismatch_penalty_deg), atol=1e-3)


def test_short_training_run_writes_weights_and_card(tmp_path):
    out = tmp_path / "m.pt"
    rc = main(["--data-dir", str(tmp_path / "data"), "--out", str(out), "--photos", "24", "--steps", "4", "--batch", "2",
               "--max-shapes", "2", "--grid", "4,3,2", "--seed", "3"])
    assert rc == 0 and out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["seed"] == 3 and meta["steps"] == 4 and np.isfinite(meta["final_loss"])
    assert set(meta["train_shapes"]).isdisjoint(meta["heldout_shapes"]) and meta["heldout_shapes"]
    model, m2 = checkpoint.load(out)
    assert m2["grid"] == "grid-4x3x2"
    with torch.no_grad():
        d = model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 2, 1, 64, 64))
    assert d.shape == (1, 2) and torch.isfinite(d).all()


def test_photos_made_in_worker_processes_are_the_same_set(tmp_path):
    """Photo i is a pure function of (seed, i): the pooled set must equal the one-process set, in order."""
    import trimesh

    from models.train_matching import photo_set
    from shape_library.library import ShapeLibrary

    lib = ShapeLibrary(tmp_path / "var")
    for name, mesh in [("box", trimesh.creation.box((1.0, 0.5, 0.3))), ("cyl", trimesh.creation.cylinder(0.3, 1.5))]:
        f = tmp_path / f"{name}.ply"
        mesh.export(f)
        lib.add(f, name=name, category="misc")
    ids = [s.id for s in lib.shapes()]
    one = photo_set(lib, ids, 8, 5, 32, 0.08, progress=False)
    pooled = photo_set(lib, ids, 8, 5, 32, 0.08, progress=False, workers=2, cache=tmp_path / "p.npz")
    assert set(one) == set(pooled)
    for k in one:
        assert np.array_equal(one[k], pooled[k]), k
    assert len(set(one["shapes"].tolist())) == 2 and one["crops"].std() > 0
    again = photo_set(lib, ids, 8, 5, 32, 0.08, progress=False, workers=2, cache=tmp_path / "p.npz")  # from the cache
    assert np.array_equal(again["crops"], one["crops"])


def test_checkpoint_split_follows_names_not_ids(tmp_path):
    """A library imported in another order numbers its shapes differently: the split must follow the names."""
    import pytest
    import trimesh

    from models.train_matching import checkpoint_split
    from shape_library.library import ShapeLibrary

    lib = ShapeLibrary(tmp_path / "var")
    for name in ("c", "a", "b"):   # ids 1, 2, 3 here; the checkpoint's machine had a=1, b=2, c=3
        f = tmp_path / f"{name}.ply"
        trimesh.creation.box((1.0, 0.5 + 0.1 * ord(name), 0.3)).export(f)
        lib.add(f, name=name, category="car")
    meta = {"train_shapes": [1, 2], "heldout_shapes": [3], "shape_names": {"1": "car/a", "2": "car/b", "3": "car/c"}}
    here = {s.name: s.id for s in lib.shapes()}
    assert checkpoint_split(meta, lib) == ([here["a"], here["b"]], [here["c"]])
    assert checkpoint_split({"train_shapes": [1], "heldout_shapes": [2]}, lib) == ([1], [2])   # old cards: ids as stored
    meta["shape_names"]["3"] = "car/zz"
    with pytest.raises(SystemExit, match="car/zz"):
        checkpoint_split(meta, lib)
