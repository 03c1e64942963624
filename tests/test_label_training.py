"""The label experiments' commands run end to end on a tiny budget (the default library only)."""
import numpy as np
import pytest

from models import checkpoint
from models.label_data import slot_split

MATCHING = checkpoint.WEIGHTS_DIR / "matching.pt"
pytestmark = pytest.mark.skipif(not MATCHING.is_file(), reason="shipped matching weights missing")


def test_slot_split_covers_every_sprite_once():
    for n in (5, 10, 40):
        parts = slot_split(n)
        flat = [i for r in parts for i in r]
        assert sorted(flat) == list(range(n)) and all(len(r) for r in parts)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tmp_path_factory.mktemp("labels")


def test_tagging_comparison_runs_and_learns(tiny):
    from models import train_tags

    args = train_tags.build_parser().parse_args([
        "--data-dir", str(tiny), "--scenes", "400", "--test-scenes", "60", "--sprites-per-shape", "10", "--steps", "120",
        "--batch", "32", "--backbone", str(MATCHING), "--quiet", "--no-reports"])
    out = train_tags.run(args)
    assert set(out["results"]) == set(out["fine_grained"]) == {"quasibinary", "sigmoid", "softmax", "softmax-t"}
    assert out["meta"]["fine_grained_labels"] == 27  # every default-library shape is a label of its own
    assert out["meta"]["backbone"]["sha256"] == checkpoint.file_hash(MATCHING)   # the card names the backbone it froze
    for kind, r in out["results"].items():
        m = r["metrics"]
        assert r["final_loss"] < r["first_loss"], kind
        assert 0 <= m["single_top1_error"] <= 1 and 0 <= m["multi_ece_top4"] <= 1 and 0 <= m["ood_mmc"] <= 1, kind
        assert sum(b["count"] for b in m["reliability_top4"]) > 0
    q = out["models"]["quasibinary"].head
    assert q.c_seen.item() == 1 and np.isfinite(q.log_c_avg.item())
    assert out["results"]["softmax-t"]["temperature"] > 0


def test_vec2bundle_study_runs(tiny):
    from models import train_hierarchy

    args = train_hierarchy.build_parser().parse_args([
        "--data-dir", str(tiny), "--sprites-per-shape", "10", "--repeats", "1", "--multi-scenes", "200", "--steps", "100",
        "--batch", "32", "--backbone", str(MATCHING), "--quiet", "--no-reports"])
    out = train_hierarchy.run(args)
    k = out["meta"]["classes"]
    assert k == 27  # the generated default library's shapes
    assert {"Vec2Bundle (RBF prototypes, Ward)", "semantic (category → shape)", "k-means on class covariance",
            "spectral clustering of confusions"} <= set(out["single"])
    for name, r in out["single"].items():
        assert 0 <= r["auc_max_rew"] <= 1 and r["max_rew"][-1][0] == pytest.approx(1.0), name
    assert set(out["multi"]) >= {"Vec2Bundle, MaxK-REW K=1", "Vec2Bundle, MaxK-REW K=5"}
    assert out["models"]["rbf"].class_points().shape == (k, 256)


def test_label_backbone_command_trains_a_backbone_the_taggers_load(tiny):
    import torch

    from models import train_label_backbone
    from models.label_data import FrozenBackbone

    out = tiny / "backbone.pt"
    meta = train_label_backbone.run(train_label_backbone.build_parser().parse_args([
        "--data-dir", str(tiny), "--scenes", "400", "--sprites-per-shape", "10", "--repeats", "1", "--multi-scenes", "200",
        "--steps", "40", "--batch", "16", "--out", str(out), "--quiet"]))
    assert meta["final_loss"] < meta["first_loss"]
    frozen = FrozenBackbone(out)
    start = FrozenBackbone(MATCHING)
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    f = frozen(images)
    assert f.shape == start(images).shape
    # Trained: the stream is no longer the matching network's.
    assert not all(torch.equal(a, b) for a, b in zip(frozen.stream.state_dict().values(), start.stream.state_dict().values()))


def test_outlier_exposure_changes_training_scenes_only(tiny):
    from models import train_tags
    from models.label_data import OUTLIER_ID_OFFSET, prepare, prepare_outliers

    args = train_tags.build_parser().parse_args([
        "--data-dir", str(tiny), "--scenes", "400", "--test-scenes", "60", "--sprites-per-shape", "10",
        "--outliers", "6", "--outlier-share", "0.5", "--quiet"])
    library, bank = prepare(tiny, None, 0, 10, progress=False)
    outliers = prepare_outliers(tiny, 6, 0, per_shape=5, progress=False)
    assert outliers.shape_ids.min() >= OUTLIER_ID_OFFSET
    plain, _ = train_tags.scene_sets(bank, library, args, "category")
    oe, _ = train_tags.scene_sets(bank, library, args, "category", outliers)
    for name in ("single", "multi", "zero_in", "ood"):
        assert np.array_equal(plain[name]["images"], oe[name]["images"]), name
    assert not np.array_equal(plain["train"]["images"], oe["train"]["images"])
    # Outliers are unlabelled: the share of training scenes without a label grows.
    assert (oe["train"]["labels"].sum(1) == 0).mean() > (plain["train"]["labels"].sum(1) == 0).mean()
    has = oe["ood"]["objects"] > 0     # (the default library alone has no OOD category: empty scenes)
    assert oe["ood"]["categories"].shape == (len(has), len(train_tags.OOD_CATEGORIES))
    assert (oe["ood"]["categories"][has].sum(1) >= 1).all()


def test_stretched_training_shapes_join_the_training_scenes_only(tiny):
    from models import train_tags
    from models.label_data import STRETCH_ID_OFFSET, prepare, prepare_stretched, shape_splits

    args = train_tags.build_parser().parse_args([
        "--data-dir", str(tiny), "--scenes", "400", "--test-scenes", "60", "--sprites-per-shape", "10", "--quiet"])
    library, bank = prepare(tiny, None, 0, 10, progress=False)
    st = prepare_stretched(tiny, library, 4, (0.6, 1.6), 0, progress=False)
    train_ids, _ = shape_splits(library, 0)
    assert set(st.shape_ids - STRETCH_ID_OFFSET) == set(train_ids)       # training shapes only, categories kept
    cats = {s.id: s.category for s in library.shapes()}
    assert all(cats[int(i) - STRETCH_ID_OFFSET] == c for i, c in zip(st.shape_ids, st.categories))
    base = bank.select(shape_ids=[int(st.shape_ids[0]) - STRETCH_ID_OFFSET])[0]
    assert not np.array_equal(bank.rgba[base], st.rgba[0])              # a different (stretched) sprite
    plain, _ = train_tags.scene_sets(bank, library, args, "category")
    more, _ = train_tags.scene_sets(bank, library, args, "category", stretched=st)
    for name in ("val", "single", "multi", "zero_in", "ood"):
        assert np.array_equal(plain[name]["images"], more[name]["images"]), name
    assert not np.array_equal(plain["train"]["images"], more["train"]["images"])
    assert more["train"]["labels"].sum() > 0
    fine, _ = train_tags.scene_sets(bank, library, args, "shape", stretched=st)    # shape labels: not used
    assert np.array_equal(fine["train"]["images"], train_tags.scene_sets(bank, library, args, "shape")[0]["train"]["images"])


def test_tag_report_lists_ood_categories_and_judges_against_the_baselines_only(tmp_path):
    from models import train_tags

    def res(ece, mmc, cats):
        return {"metrics": {"single_top1_error": 0.3, "zero_label_in_accuracy": 0.8, "ood_mmc": mmc, "ood_auroc": 0.6,
                            "multi_f1_top4": 0.5, "multi_ece_top4": ece, "ood_mmc_by_category": cats}}
    results = {"quasibinary": res(0.05, 0.08, {"bottle": 0.1, "teapot": 0.06}), "sigmoid": res(0.07, 0.5, {"bottle": 0.5}),
               "softmax": res(0.09, 0.6, {}), "softmax-t": res(0.08, 0.4, {}),
               train_tags.NO_OE: res(0.01, 0.9, {"bottle": 0.9, "teapot": 0.95})}   # better ECE, but an ablation
    meta = {"test_scenes": 10, "seed": 0, "steps": 1, "hardware": "cpu", "none_threshold": 0.2}
    block = train_tags.write_reports(results, {}, meta, tmp_path / "eval.md")
    assert "ECE 0.050 vs best baseline 0.070 → met; MMC 0.080 → met" in block
    assert "| head | bottle | teapot |" in block
    assert "| quasibinary without outlier exposure (ablation) | 0.900 | 0.950 |" in block
    assert "| independent sigmoids | 0.500 | – |" in block


def test_a_head_trains_the_same_whatever_ran_before_in_the_process():
    import torch

    from models import train_tags
    from models.label_data import FrozenBackbone

    backbone = FrozenBackbone(MATCHING)
    rng = np.random.default_rng(0)
    feats = {k: rng.normal(size=(40, 64, 4, 4)).astype(np.float16) for k in ("train", "val", "single", "multi", "zero_in", "ood")}
    labels = {k: (rng.random((40, 3)) < 0.4).astype(np.float32) for k in feats}
    labels["single"] = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    args = train_tags.build_parser().parse_args(["--steps", "5", "--batch", "8", "--quiet"])
    cats = np.zeros((40, len(train_tags.OOD_CATEGORIES)), np.float32)
    runs = []
    for noise in (0, 1):
        torch.rand(noise * 1000)          # a different global RNG state before each run
        _, r, _, _ = train_tags._train_head("quasibinary", ["a", "b", "c"], backbone, feats, labels, cats, args, "t")
        runs.append(r["metrics"]["multi_ece_top4"])
    assert runs[0] == runs[1]


def test_the_shipped_tagger_is_not_overwritten_from_a_backbone_of_another_matching_pt(tmp_path):
    import json

    from models.train_tags import check_shipped_backbone

    out = tmp_path / "tagger.pt"
    out.with_suffix(".json").write_text(json.dumps({"backbone": {"init_from_sha": "aaaa"}}))
    with pytest.raises(SystemExit, match="--replace-backbone"):
        check_shipped_backbone(out, {"init_from_sha": "bbbb"})
    check_shipped_backbone(out, {"init_from_sha": "bbbb"}, allow=True)
    check_shipped_backbone(out, {"init_from_sha": "aaaa"})
    check_shipped_backbone(tmp_path / "new.pt", {"init_from_sha": "bbbb"})      # nothing shipped there yet
