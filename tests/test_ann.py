"""FAISS first stage (shape_library.ann): exact top-N, incremental updates, persistence, the
automatic switch in the search engine, and the embedding's distillation loss."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import three_shape_index
from models.embedding import CodeEmbedding, EmbeddingConfig
from models.matching import MatchingConfig, MatchingNet
from shape_library.ann import AnnIndex, first_stage
from shape_library.grid import PoseGrid
from shape_library.index import ViewIndexConfig
from shape_library.search import SearchEngine

pytest.importorskip("faiss")

V = 50
D = 24


class FakeFeatures:
    """Random codes per shape id, the part of FeatureIndex the ANN index reads."""

    def __init__(self, root, key="k1"):
        self.key = key
        self.root = root / "codes" if root is not None else None
        self.views = SimpleNamespace(config=SimpleNamespace(grid=range(V)))

    def codes(self, sid):
        g = torch.Generator().manual_seed(int(sid))
        return torch.randn(V, D, generator=g).half()


def _emb(seed=0, code_dim=D, dim=8):
    torch.manual_seed(seed)
    return CodeEmbedding(EmbeddingConfig(code_dim=code_dim, dim=dim, hidden=16)).eval()


def test_flat_index_is_exact_inner_product_topn(tmp_path):
    f, emb = FakeFeatures(tmp_path), _emb()
    ann = AnnIndex(f, emb, "e1", ivf_min_vectors=10**9)
    ann.sync(range(1, 9))
    assert ann.ntotal == 8 * V and ann.trained_on == 0
    allv = np.concatenate([ann.view_embeddings(s) for s in range(1, 9)])
    ids = np.concatenate([ann.ids_of(s) for s in range(1, 9)])
    q = ann.photo_embedding(torch.randn(D))
    D_, I = ann.search(q, 25)
    exact = ids[np.argsort(-(allv @ q[0]), kind="stable")[:25]]
    assert set(I[0].tolist()) == set(exact.tolist())
    assert np.all(np.diff(D_[0]) <= 1e-6)
    # first_stage splits ids into (shape, pose) and honours restrictions
    sids, poses = first_stage(ann, torch.randn(D), 30, allowed_shapes=[2, 3], pose_subset=np.arange(10))
    assert len(sids) and set(sids.tolist()) <= {2, 3} and poses.max() < 10


def test_incremental_add_remove_and_persistence(tmp_path):
    f, emb = FakeFeatures(tmp_path), _emb()
    ann = AnnIndex(f, emb, "e1", ivf_min_vectors=10**9)
    ann.sync([1, 2, 3])
    ann.sync([2, 3, 4])                              # removes 1, adds 4, saves
    assert ann.shapes == {2, 3, 4} and ann.ntotal == 3 * V
    _, I = ann.search(ann.photo_embedding(torch.randn(D)), 3 * V)
    assert set((I[0] // V).tolist()) == {2, 3, 4}
    # a fresh process loads it from disk instead of rebuilding
    again = AnnIndex(f, emb, "e1", ivf_min_vectors=10**9)
    assert again.load() and again.shapes == {2, 3, 4} and again.ntotal == 3 * V
    q = ann.photo_embedding(torch.randn(D))
    assert np.array_equal(ann.search(q, 20)[1], again.search(q, 20)[1])
    # other embedding weights: another key, nothing loads; a damaged file is rebuilt by sync
    other = AnnIndex(f, _emb(1), "e2", root=ann.root, ivf_min_vectors=10**9)
    assert not other.load()
    other.sync([2, 3])
    assert other.ntotal == 2 * V
    (ann.root / "index.faiss").write_bytes(b"garbage")
    broken = AnnIndex(f, emb, "e1", ivf_min_vectors=10**9)
    broken.sync([2, 3, 4])
    assert broken.ntotal == 3 * V


def test_ivf_index_grows_removes_and_reloads(tmp_path):
    f, emb = FakeFeatures(tmp_path), _emb()
    ann = AnnIndex(f, emb, "e1", ivf_min_vectors=20 * V, nlist=8, nprobe=8)
    ann.sync(range(30))
    assert ann.trained_on == 30 * V and ann.ntotal == 30 * V
    ann.sync(range(5, 32))
    assert ann.ntotal == 27 * V and ann.shapes == set(range(5, 32))
    q = ann.photo_embedding(torch.randn(D))
    _, I = ann.search(q, 40)                         # nprobe = nlist: exact within the quantiser
    allv = np.concatenate([ann.view_embeddings(s) for s in range(5, 32)])
    ids = np.concatenate([ann.ids_of(s) for s in range(5, 32)])
    exact = set(ids[np.argsort(-(allv @ q[0]))[:40]].tolist())
    assert len(exact & set(I[0].tolist())) >= 36     # 8-bit scalar quantisation may swap near-ties
    again = AnnIndex(f, emb, "e1", ivf_min_vectors=20 * V, nlist=8, nprobe=8)
    assert again.load() and again.trained_on == 30 * V
    assert np.array_equal(again.search(q, 40)[1], I)


CFG = ViewIndexConfig(grid=PoseGrid(6, 3, 3), canvas=64, crop=32)


def _library(tmp):
    lib, _, model, features = three_shape_index(tmp, CFG)
    return lib, features, model


def test_search_switches_to_ann_by_size(tmp_path):
    lib, features, model = _library(tmp_path)
    emb = _emb(code_dim=model.code_dim)
    ann = AnnIndex(features, emb, "e-test", ivf_min_vectors=10**9)
    n_views = len(lib.shapes()) * len(CFG.grid)
    exhaustive = SearchEngine(lib, features, model, ann=ann, ann_min_views=None)
    covering = SearchEngine(lib, features, model, ann=ann, ann_min_views=1, ann_top_n=n_views)
    above = SearchEngine(lib, features, model, ann=ann, ann_min_views=n_views + 1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        img = Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
        ref = exhaustive.search(img, refine=False, top_k=5)
        full = covering.search(img, refine=False, top_k=5)
        assert ref.stage == "exhaustive" and "ann_first_stage" not in ref.timing_ms
        assert full.stage == "ann" and "ann_first_stage" in full.timing_ms and full.candidates == n_views
        # N covering every view: the re-ranking sees all candidates, so the ranking is the exhaustive one
        # (up to the order of exact ties)
        assert (full.matches[0].shape_id, full.matches[0].pose_index) == (ref.matches[0].shape_id, ref.matches[0].pose_index)
        assert np.allclose([m.score for m in full.matches], [m.score for m in ref.matches], atol=1e-3)
        assert above.search(img, refine=False).stage == "exhaustive"
    # restrictions still hold on the ANN path
    cat = covering.search(img, category="other", refine=False, top_k=3)
    assert cat.stage == "ann" and {m.category for m in cat.matches} == {"other"}
    sub = covering.search(img, refine=False, top_k=3, pose_subset=np.arange(5))
    assert all(m.pose_index < 5 for m in sub.matches)


def test_embedding_distillation_reduces_loss():
    from models.train_embedding import fit

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = MatchingNet(MatchingConfig(input_size=32, widths=(8, 8, 8, 8, 8), fusion_channels=8, init_std=0.2)).eval()
    codes = torch.randn(3000, model.code_dim).half()
    pcodes = torch.randn(200, model.code_dim)
    with torch.no_grad():
        hard = np.stack([torch.topk(model.head.score_codes(p[None], codes.float())[0], 8, largest=False).indices.numpy() for p in pcodes])
    emb = CodeEmbedding(EmbeddingConfig(code_dim=model.code_dim, dim=16, hidden=64))
    emb.set_stats(pcodes, codes)
    losses = fit(model, emb, codes, pcodes, hard, steps=120, batch=16, negatives=128, tau=0.05, lr=3e-3, rng=rng, progress=False)
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:10])


def test_distilled_first_stage_keeps_the_exhaustive_top1():
    """A tiny distillation on random codes: FAISS's top 10 % holds the fused head's top-1 for most new photos."""
    from models.matching import GeometricDifferential
    from models.train_embedding import fit

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    f = FakeFeatures(None)
    teacher = SimpleNamespace(head=GeometricDifferential(8, 1, D, 0.3).eval())
    shapes = list(range(40))
    codes = torch.cat([f.codes(s) for s in shapes])
    pcodes = torch.randn(300, D)
    with torch.no_grad():
        T = teacher.head.score_codes(pcodes, codes.float())
    hard = torch.topk(T, 8, largest=False).indices.numpy()
    emb = CodeEmbedding(EmbeddingConfig(code_dim=D, dim=16, hidden=64))
    emb.set_stats(pcodes[:260], codes)
    fit(teacher, emb, codes, pcodes[:260], hard[:260], steps=200, batch=32, negatives=256, tau=0.05, lr=3e-3, rng=rng, progress=False)
    ann = AnnIndex(f, emb, "e-tiny", root=Path("/nonexistent-never-saved"), ivf_min_vectors=10**9)
    ann.build(shapes)
    best = T.argmin(1).numpy()
    hits = 0
    for q in range(260, 300):
        sids, poses = first_stage(ann, pcodes[q], len(codes) // 10)
        hits += int(best[q] in set((sids * V + poses).tolist()))
    assert hits / 40 >= 0.7, hits


def test_bench_copies_embed_exactly_like_their_codes():
    """The FAISS benchmark's derived copies: FAISS must hold the true embeddings of the codes the
    re-ranking scores (by the render side's linearity), and donors are other shapes of the category."""
    from models.bench_faiss import SyntheticLibrary

    torch.manual_seed(0)
    emb = CodeEmbedding(EmbeddingConfig(code_dim=D, dim=8, hidden=16, render_hidden=0)).eval()
    emb.set_stats(torch.randn(100, D), torch.randn(100, D) * 0.5 + 0.2)
    real = torch.randn(6, V, D).half()
    cats = np.array(["a", "a", "a", "b", "b", "b"])
    lib = SyntheticLibrary(real, cats, emb, n=20, lam=(0.2, 0.4), noise=0.05, seed=0)
    poses = np.arange(0, V, 7)
    for s in (0, 7, 19):
        with torch.no_grad():
            want = emb.embed_render(lib.shape_codes(s)).numpy()
        assert np.allclose(lib.vectors(s), want, atol=1e-4)
        got = lib.codes_at(np.full(len(poses), s), poses).float()
        assert torch.allclose(got, lib.shape_codes(s)[torch.from_numpy(poses)], atol=1e-2)
    assert all(cats[a] == cats[b] and a != b for a, b in zip(lib.a, lib.b))
    assert not torch.allclose(lib.shape_codes(7), lib.shape_codes(8))


def test_an_embedding_distilled_from_other_matching_weights_is_not_used(tmp_path, monkeypatch):
    """Retraining matching.pt without train_embedding must not let FAISS rank views by stale codes."""
    from models import checkpoint
    from shape_library import search as search_mod
    from shape_library.settings import get_settings

    lib, features, model = _library(tmp_path)
    emb = _emb(code_dim=model.code_dim)
    path = tmp_path / "emb.pt"
    monkeypatch.setattr(get_settings(), "embedding_weights", path)
    checkpoint.save(emb, "embedding", path, {"matching_hash": "not-these-weights"})
    assert search_mod._ann_from_settings(features, model) is None
    checkpoint.save(emb, "embedding", path, {"matching_hash": features.weights_key})
    assert isinstance(search_mod._ann_from_settings(features, model), AnnIndex)


def test_the_shipped_embedding_is_distilled_from_the_shipped_matching_weights():
    """Otherwise the service silently falls back to exhaustive search on large libraries."""
    from models import checkpoint

    _, meta = checkpoint.load(checkpoint.WEIGHTS_DIR / "embedding.pt")
    assert meta["matching_hash"] == checkpoint.file_hash(checkpoint.WEIGHTS_DIR / "matching.pt"), \
        "matching.pt changed: rerun python -m models.train_embedding"


def test_embedding_photos_come_from_a_longer_cached_stream(tmp_path):
    """Photo i depends only on (seed, i): the first n of a longer cached set are the set to train on."""
    import argparse

    from models import checkpoint, registry
    from models.train_embedding import training_photos
    from shape_library.library import ShapeLibrary
    import trimesh

    lib = ShapeLibrary(tmp_path)
    for name in ("a", "b", "c"):
        f = tmp_path / f"{name}.ply"
        trimesh.creation.box((1.0, 0.3 + 0.2 * ord(name) % 5, 0.4)).export(f)
        lib.add(f, name=name, category="car")
    ids = [s.id for s in lib.shapes()]
    names = {str(s.id): f"car/{s.name}" for s in lib.shapes()}
    weights = tmp_path / "m.pt"
    checkpoint.save(registry.create("matching-cpu", widths=(4, 4, 4, 4, 4), fusion_channels=2), "matching-cpu", weights,
                    {"train_shapes": ids[:2], "heldout_shapes": ids[2:], "shape_names": names})
    rows = {"crops": np.arange(10 * 2, dtype=np.uint8).reshape(10, 2), "shapes": np.arange(10)}
    np.savez(tmp_path / "photos-train-0-10-64-2.npz", **rows)
    np.savez(tmp_path / "photos-heldout-1000-4-64-1.npz", **{k: v[:4] for k, v in rows.items()})
    args = argparse.Namespace(matching=weights, data_dir=tmp_path, train_photos="", heldout_photos="",
                              photos=6, eval_photos=3, workers=1)
    train, held = training_photos(args)
    assert np.array_equal(train["crops"], rows["crops"][:6]) and np.array_equal(held["shapes"], np.arange(3))
    args.photos = 12   # no cached set is long enough: made now, of the training shapes, and cached
    train, _ = training_photos(args)
    assert len(train["crops"]) == 12 and set(train["shapes"].tolist()) <= set(ids[:2])
    assert (tmp_path / "photos-train-0-12-64-2.npz").is_file()
