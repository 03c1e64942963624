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
    # chunked in place through one scratch buffer: a partial last chunk must not reuse stale rows
    codes = engine.features.codes(sid).float()
    assert len(codes) % 16
    chunked = SearchEngine(lib, engine.features, model, chunk=16)   # several full chunks and a partial one
    assert torch.allclose(chunked.score_all(code, codes), fast, atol=1e-5)
    assert chunked.score_all(code, codes[:0]).shape == (0,)


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


@pytest.mark.parametrize("refine_top", [1, 2])
def test_refinement_moves_only_the_best_refine_top_answers(setup, monkeypatch, refine_top):
    lib, _, model, engine, _ = setup
    eng = SearchEngine(lib, engine.features, model, refine_top=refine_top)
    moved = []
    real = eng.refine
    monkeypatch.setattr(eng, "refine", lambda code, ms, prior=None: moved.append(len(ms)) or real(code, ms, prior))
    plain = eng.search(_photo(), top_k=4, refine=False)
    refined = eng.search(_photo(), top_k=4, refine=True)
    assert moved == [refine_top]
    # the answers below the refined ones are the grid answers, untouched
    assert [(m.shape_id, m.pose_index) for m in refined.matches if m.pose_index is not None][-(4 - refine_top):] == \
        [(m.shape_id, m.pose_index) for m in plain.matches][refine_top:]


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


def test_coverage_says_when_a_search_sees_only_part_of_the_library(setup):
    """A shape added but not indexed yet is outside the search: coverage counts it, per scope, and its notice says why."""
    from shape_library.catalog import IndexStatus

    lib, views, model, engine, tmp = setup
    assert (engine.coverage().indexed, engine.coverage().total, engine.coverage().notice()) == (3, 3, None)
    f = tmp / "late.ply"
    trimesh.creation.icosphere(1).export(f)
    sid = lib.add(f, name="late", category="misc").shape.id
    try:
        cov = engine.coverage()
        assert (cov.indexed, cov.total, cov.coming, cov.complete) == (3, 4, 1, False)
        assert "only 3 of the 4 shapes" in cov.notice() and "still being indexed" in cov.notice()
        assert engine.coverage("other").complete and engine.coverage(None, [1, 2]).complete   # scope: category, ids
        assert engine.coverage("misc").total == 3 and engine.coverage(None, [sid]).indexed == 0
        assert engine.search(_photo(), refine=False).candidates == 3 * len(CFG.grid)        # what the notice is about
        lib.set_status(sid, IndexStatus.failed)
        cov = engine.coverage()
        assert cov.coming == 0 and "1 failed to index" in cov.notice()
    finally:
        lib.remove(sid)
    assert engine.coverage().complete


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


def test_pose_prior_distance_is_rotation_from_the_prediction_or_its_costed_flip():
    from models.viewpoint import PosePrior

    poses = np.array([[30.0, 10.0, 5.0], [210.0, 10.0, 5.0], [70.0, 10.0, 5.0]])
    plain, costed = PosePrior((30.0, 10.0, 5.0)), PosePrior((30.0, 10.0, 5.0), weight=3.0, flip_cost=12.0)
    d, dc = plain.distance(poses).numpy(), costed.distance(poses).numpy()
    assert d[0] == pytest.approx(0, abs=1e-6) and d[1] > 150          # the flip is far without a discount
    assert dc[1] == pytest.approx(12.0, abs=1e-6)                     # ... and costs flip_cost with one
    assert d[2] == pytest.approx(dc[2]) and 35 < d[2] < 45            # 40° of azimuth near the horizon
    assert costed.combine(10.0, 2.0) == pytest.approx((10.0 + 3 * 2.0) / 4)


def test_an_unsure_prediction_pulls_less_when_the_confidence_power_is_set():
    from models.viewpoint import PosePrior

    sure, unsure = (PosePrior.from_prediction([30.0, 10.0, 5.0], c, 2.0, 12.0, confidence_power=2.0) for c in (1.0, 0.5))
    assert sure.weight == pytest.approx(2.0) and unsure.weight == pytest.approx(0.5)
    assert unsure.flip_cost == 12.0 and unsure.angles_deg == (30.0, 10.0, 5.0)
    assert PosePrior.from_prediction([30.0, 10.0, 5.0], 0.1, 2.0).weight == pytest.approx(2.0)   # power 0: confidence ignored


def test_search_with_a_pose_prior_ranks_by_the_combined_estimate(setup):
    from models.viewpoint import PosePrior

    lib, _, _, engine, _ = setup
    img, sid = _photo(), lib.shapes()[0].id
    plain = engine.search(img, shape_ids=[sid], top_k=len(CFG.grid), refine=False)
    worst = plain.matches[-1]                       # the matcher's least likely pose ...
    centre = (worst.azimuth, worst.elevation, worst.theta)
    strong = engine.search(img, shape_ids=[sid], top_k=5, refine=False, prior=PosePrior(centre, weight=1e4))
    top = strong.matches[0]
    assert top.pose_index == worst.pose_index and top.prior_deg == pytest.approx(0, abs=1e-3)   # ... wins under a strong prior
    assert top.score == pytest.approx(worst.score, abs=1e-4)        # the matcher's own estimate is kept beside
    out = [m.as_dict() for m in strong.matches]
    raw = [o["raw_score"] for o in out]
    assert all(b >= a - 1e-4 for a, b in zip(raw, raw[1:]))       # best first, by the combined value (float32 ties)
    assert out[0]["matcher_score"] == pytest.approx(worst.score) and out[0]["prior_deg"] == pytest.approx(0, abs=1e-3)
    # a weak prior only breaks near-ties: the matcher's best stays on top
    weak = engine.search(img, shape_ids=[sid], top_k=1, refine=False, prior=PosePrior(centre, weight=1e-6))
    assert weak.matches[0].pose_index == plain.matches[0].pose_index
    assert plain.matches[0].as_dict()["prior_deg"] is None


def test_refinement_under_a_strong_prior_moves_towards_the_prediction_off_the_grid(setup):
    from models.viewpoint import PosePrior

    lib, _, _, engine, _ = setup
    img, sid = _photo(), lib.shapes()[1].id
    a, e, t = CFG.grid.poses(7)
    centre = (float(a) + 15.0, float(e), float(t))       # between grid poses
    prior = PosePrior(centre, weight=1e4)
    res = engine.search(img, shape_ids=[sid], top_k=1, refine=True, prior=prior)
    m = res.matches[0]
    grid_d = float(prior.distance(CFG.grid.poses(7)[None])[0])
    assert m.pose_index is None and m.prior_deg < grid_d - 5    # refined off the grid, closer to the prediction
    assert m.as_dict()["raw_score"] == pytest.approx(prior.combine(m.score, m.prior_deg))


def test_no_match_reads_the_matcher_score_not_the_prior_mean(setup):
    from models.viewpoint import PosePrior

    lib, views, model, engine, _ = setup
    img, sid = _photo(), lib.shapes()[0].id
    plain = engine.search(img, shape_ids=[sid], top_k=1, refine=False)
    threshold = plain.matches[0].score - 1e-3        # just below the matcher's best: "no match" without the prior
    strict = SearchEngine(lib, engine.features, model, no_match_threshold_deg=threshold)
    top = strict.search(img, shape_ids=[sid], top_k=1, refine=False).matches[0]
    centre = (top.azimuth, top.elevation, top.theta)
    res = strict.search(img, shape_ids=[sid], top_k=1, refine=False, prior=PosePrior(centre, weight=1.0))
    assert res.matches[0].rank_value < threshold     # the combined estimate alone would pass ...
    assert res.no_match                              # ... but the verdict is the matcher's
