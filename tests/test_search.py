"""Search engine mechanics with a small random network (ranking quality is tested with the shipped weights)."""
import io

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import three_shape_index
from models import checkpoint
from shape_library.features import FeatureIndex, crops_to_tensor
from shape_library.grid import PoseGrid
from shape_library.index import ViewIndexConfig
from shape_library.search import SearchEngine, photo_crop, photos_to_tensor

CFG = ViewIndexConfig(grid=PoseGrid(6, 3, 3), canvas=64, crop=32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    lib, views, model, features = three_shape_index(tmp, CFG)
    return lib, views, model, SearchEngine(lib, features, model), tmp


def _photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))


def test_fast_scoring_equals_two_stream_forward(setup):
    lib, views, model, engine, _ = setup
    img = _photo()
    sid = lib.shapes()[0].id
    code, sq = engine.photo_code(img, (10, 10, 60, 70))
    fast = engine.score_all(code, engine.features.codes(sid).float())
    crop, sq2 = photo_crop(img, (10, 10, 60, 70), 32, CFG.margin)
    with torch.no_grad():
        full = model(photos_to_tensor(np.asarray(crop)[None]), crops_to_tensor(views.load(sid).crops)[None])[0]
    assert sq == sq2
    assert torch.allclose(fast, full, atol=1e-3)
    # float16 storage keeps the ranking of clearly separated scores
    half = engine.score_all(code, engine.features.codes(sid))
    assert torch.allclose(half, full, atol=2e-2)


def test_search_filters_and_sorting(setup):
    lib, views, _, engine, _ = setup
    img = _photo()
    res = engine.search(img, top_k=7, refine=False)
    assert res.candidates == 3 * len(CFG.grid)
    scores = [m.score for m in res.matches]
    assert scores == sorted(scores) and len(scores) == 7
    for m in res.matches:  # pose_index and angles agree
        assert np.allclose(CFG.grid.poses(m.pose_index), (m.azimuth, m.elevation, m.theta))
    only = engine.search(img, category="other", refine=False)
    assert only.candidates == len(CFG.grid) and {m.category for m in only.matches} == {"other"}
    ids = [lib.shapes()[1].id]
    sub = engine.search(img, shape_ids=ids, refine=False)
    assert {m.shape_id for m in sub.matches} == set(ids)
    poses = np.array([0, 5, 9])
    pruned = engine.search(img, pose_subset=poses, refine=False, top_k=3)
    assert pruned.candidates == 3 * len(poses) and all(m.pose_index in poses for m in pruned.matches)


def test_refinement_never_worsens_and_leaves_the_grid(setup):
    _, _, _, engine, _ = setup
    img = _photo()
    plain = engine.search(img, top_k=3, refine=False)
    refined = engine.search(img, top_k=3, refine=True)
    assert refined.matches[0].score <= plain.matches[0].score + 1e-6
    poses = engine.refinement_poses(100.0, 5.0, 0.0)
    assert len(poses) == 27 and np.allclose(poses.mean(axis=0), (100, 5, 0), atol=1e-6)


def test_index_codes_follow_add_and_remove(setup):
    lib, views, model, engine, tmp = setup
    f = tmp / "sphere.ply"
    trimesh.creation.icosphere(2).export(f)
    sid = lib.add(f, name="sphere", category="misc").shape.id
    views.sync(progress=False)
    assert engine.search(_photo(), refine=False).candidates == 4 * len(CFG.grid)
    lib.remove(sid)
    views.sync(progress=False)
    engine.features.remove(sid)
    assert engine.search(_photo(), refine=False).candidates == 3 * len(CFG.grid)
    assert not engine.features.path(sid).exists()


def test_codes_persist_and_are_keyed_by_weights(setup):
    lib, views, model, engine, _ = setup
    sid = lib.shapes()[0].id
    engine.features.codes(sid)
    again = FeatureIndex(views, model, "test-weights")
    assert again.path(sid).is_file()
    assert torch.equal(again.codes(sid), engine.features.codes(sid))
    other = FeatureIndex(views, model, "other-weights")
    assert other.root != again.root


def test_overlay_draws_inside_the_box(setup):
    _, _, _, engine, _ = setup
    img = Image.new("RGB", (120, 90), (30, 30, 30))
    res = engine.search(img, box=(40, 20, 90, 80), refine=False)
    png = Image.open(io.BytesIO(engine.overlay(img, res)))
    assert png.size == img.size and png.format == "PNG"
    diff = np.abs(np.asarray(png, np.int16) - np.asarray(img, np.int16)).sum(-1) > 0
    ys, xs = np.nonzero(diff)
    x0, y0, x1, y1 = res.photo_box
    assert diff.any() and xs.min() >= int(x0) - 1 and xs.max() <= x1 + 1 and ys.min() >= int(y0) - 1 and ys.max() <= y1 + 1


def test_checkpoint_round_trip(tmp_path, setup):
    _, _, model, _, _ = setup
    path = checkpoint.save(model, "matching-cpu", tmp_path / "w.pt", {"seed": 1})
    loaded, meta = checkpoint.load(path)
    assert meta == {"seed": 1} and loaded.config == model.config
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(loaded.render_codes(x), model.render_codes(x), atol=5e-3)


def test_reported_score_is_a_distance_and_raw_score_keeps_the_ranking_order():
    from shape_library.search import Match

    ms = [Match(1, "car", "a", 10.0, 0.0, 0.0, -3.5, 5), Match(2, "car", "b", 20.0, 0.0, 0.0, -1.0, 6),
          Match(3, "car", "c", 30.0, 0.0, 0.0, 4.25, None)]
    out = [m.as_dict() for m in ms]
    assert [o["score"] for o in out] == [0.0, 0.0, 4.25]
    assert [o["raw_score"] for o in out] == [-3.5, -1.0, 4.25]
