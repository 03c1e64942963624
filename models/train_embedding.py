"""Train the FAISS first-stage embedding (models.embedding) by distillation from the fused head.

    python -m models.train_embedding --out models/weights/embedding.pt

Data: the training library of models.train_matching (var/train: the generated default
library + the real aeroplane/boat/car meshes), its stored render codes for the shipped
matching weights and the matching network's synthetic training photos (seed 0, the first `--photos`;
made and cached when missing); evaluation on photos of its held-out shapes (seed 1000).

Per training photo the teacher (MatchingNet's fused head) scores a pool of views (its own
shape and a few random others, all 2,541 poses); its best `--positives` views form the
photo's hard candidates.  A step takes a batch of photos, their hard candidates and
`--negatives` views drawn uniformly from the whole library (shared by the batch), and
minimises KL(softmax(-teacher / tau) || softmax(s <e_photo, e_render>)) over those
candidates: a listwise distillation that puts the teacher's best views on top.
Reported: recall of the exhaustive teacher top-1 (over all views of the library)
within the embedding's top-N, on held-out shapes.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, registry
from . import embedding as _embedding  # noqa: F401  (registers the model)
from . import matching  # noqa: F401


def load_codes(data_dir: Path, weights: Path):
    """(model, all render codes (N, D) float16, owner shape id per row, shape ids) of the training library."""
    from shape_library.features import FeatureIndex
    from shape_library.index import ViewIndex, ViewIndexConfig
    from shape_library.library import ShapeLibrary

    library = ShapeLibrary(data_dir)
    views = ViewIndex(data_dir / "index", library, ViewIndexConfig())
    model, _ = checkpoint.load(weights, "cpu")
    features = FeatureIndex(views, model, checkpoint.file_hash(weights))
    ids = sorted(s.id for s in library.shapes() if views.has(s.id))
    mats = [features.codes(i) for i in ids]
    owner = np.repeat(np.array(ids), [len(m) for m in mats])
    return model, torch.cat(mats), owner, ids


def training_photos(args) -> tuple[dict, dict]:
    """(training, held-out) photo sets: the named caches when given, else the matching network's own
    photo streams (its training shapes, seed 0; its held-out shapes, seed 1000, as train_viewpoint's test
    photos)."""
    from shape_library.library import ShapeLibrary

    from .train_matching import checkpoint_split, photo_stream

    _, meta = checkpoint.load(args.matching)
    library = ShapeLibrary(args.data_dir)
    train_ids, heldout_ids = checkpoint_split(meta, library)

    def stream(name, ids, n, seed, kind):
        if name:
            with np.load(args.data_dir / name) as z:
                return {k: z[k] for k in z.files}
        return photo_stream(library, ids, n, seed, kind, args.data_dir, workers=args.workers)

    return (stream(args.train_photos, train_ids, args.photos, 0, "train"),
            stream(args.heldout_photos, heldout_ids, max(args.eval_photos, 1), 1000, "heldout"))


def _categories(data_dir: Path) -> dict[int, str]:
    from shape_library.library import ShapeLibrary

    return {s.id: s.category for s in ShapeLibrary(data_dir).shapes()}


@torch.no_grad()
def photo_codes(model, crops: np.ndarray, batch: int = 256) -> torch.Tensor:
    from shape_library.search import photos_to_tensor

    return torch.cat([model.photo_codes(photos_to_tensor(crops[i:i + batch])) for i in range(0, len(crops), batch)])


@torch.no_grad()
def teacher_scores(model, pc: torch.Tensor, codes: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Fused-head distances (radians) of one photo code against (N, D) codes, float32 chunks."""
    w = model.head.fc.weight.reshape(-1)
    pc = pc.reshape(-1).float()
    return torch.cat([torch.relu(codes[i:i + chunk].float() + pc) @ w for i in range(0, len(codes), chunk)]) + model.head.fc.bias


def teacher_pairs(model, codes: torch.Tensor, pc: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D) photo codes x (B, K, D) or (K, D) codes -> (B, K) distances."""
    return model.head.score_codes(pc.float(), codes.float())


@torch.no_grad()
def hard_candidates(model, codes, owner, ids, pcodes, photo_shapes, rng, pool: int, k: int, cats=None, progress=True) -> np.ndarray:
    """For each photo, the teacher's k best rows of a pool: its own shape + pool-1 random shapes
    (of its category when `cats` is given)."""
    V = len(codes) // len(ids)
    pos = {sid: i for i, sid in enumerate(ids)}
    w = model.head.fc.weight.reshape(-1)
    out = np.zeros((len(pcodes), k), np.int64)
    for n in tqdm(range(len(pcodes)), desc="teacher pools", disable=not progress, mininterval=10):
        own = int(photo_shapes[n])
        cand = [s for s in ids if s != own and (cats is None or cats[s] == cats[own])] or [s for s in ids if s != own]
        others = rng.choice(cand, min(pool - 1, len(cand)), replace=False)
        best_s, best_r = [], []
        for sid in [own, *others]:
            r0 = pos[int(sid)] * V
            s = torch.relu(codes[r0:r0 + V] + pcodes[n].float()) @ w       # codes are float32 here
            t = torch.topk(s, k, largest=False)
            best_s.append(t.values)
            best_r.append(t.indices + r0)
        s, r = torch.cat(best_s), torch.cat(best_r)
        out[n] = r[torch.topk(s, k, largest=False).indices].numpy()
    return out


@torch.no_grad()
def evaluate(model, emb, codes, pcodes, ns=(10, 100, 1000, 5000)) -> dict:
    """Recall of the exhaustive teacher top-1 within the embedding's top-N over all rows."""
    er = emb.embed_render_batched(codes)
    ep = emb.embed_photo(pcodes)
    ranks = []
    for n in range(len(pcodes)):
        best = int(torch.argmin(teacher_scores(model, pcodes[n], codes)))
        sim = er @ ep[n]
        ranks.append(int((sim > sim[best]).sum()))
    ranks = np.array(ranks)
    return {"queries": len(ranks), "candidates": len(codes), "median_rank": float(np.median(ranks)),
            **{f"recall@{k}": float((ranks < k).mean()) for k in ns}}


def fit(model, emb, codes, pcodes, hard, steps: int, batch: int, negatives: int, tau: float, lr: float, rng, progress: bool = True) -> list[float]:
    """Listwise distillation: per photo, its hard candidates + shared uniform negatives; returns the losses."""
    positives = hard.shape[1]
    opt = torch.optim.AdamW(emb.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    emb.train()
    bar = tqdm(range(steps), desc="train embedding", mininterval=10, disable=not progress)
    for step in bar:
        idx = rng.integers(0, len(pcodes), batch)
        pos = torch.from_numpy(hard[idx])                                # (B, P)
        neg = torch.from_numpy(rng.integers(0, len(codes), negatives))
        pc = pcodes[idx]
        c_pos, c_neg = codes[pos].float(), codes[neg].float()
        with torch.no_grad():
            t = torch.cat([model.head.score_codes(pc, c_pos), model.head.score_codes(pc, c_neg)], 1)   # (B, P+N)
            target = torch.softmax(-t / tau, 1)
        ep = emb.embed_photo(pc)
        er_pos = emb.embed_render(c_pos.flatten(0, 1)).view(batch, positives, -1)
        er_neg = emb.embed_render(c_neg)
        sim = torch.cat([(er_pos @ ep.unsqueeze(2)).squeeze(2), ep @ er_neg.T], 1)
        logp = torch.log_softmax(emb.log_scale.exp() * sim, 1)
        loss = torch.nn.functional.kl_div(logp, target, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            emb.log_scale.clamp_(0.0, 5.0)
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    emb.eval()
    return losses


def train(args) -> Path:
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model, codes, owner, ids = load_codes(args.data_dir, args.matching)
    train_ph, held_ph = training_photos(args)
    n_train = min(args.photos, len(train_ph["crops"]))
    pc_train = photo_codes(model, train_ph["crops"][:n_train])
    pc_held = photo_codes(model, held_ph["crops"][: args.eval_photos])
    codes32 = codes.float()
    cats = _categories(args.data_dir)
    hard = hard_candidates(model, codes32, owner, ids, pc_train, train_ph["shapes"][:n_train], rng, args.pool, args.positives, cats)
    del codes32

    emb = registry.create("embedding", code_dim=codes.shape[1], dim=args.dim, hidden=args.hidden, render_hidden=args.render_hidden)
    emb.set_stats(pc_train, codes[torch.from_numpy(rng.choice(len(codes), 50000, replace=False))])
    losses = fit(model, emb, codes, pc_train, hard, args.steps, args.batch, args.negatives, args.tau, args.lr, rng)
    emb.eval()
    metrics = evaluate(model, emb, codes, pc_held) if args.eval_photos else {}
    elapsed = time.time() - t_start
    meta = {
        "model": "embedding", "config": emb.config.to_dict(), "seed": args.seed, "steps": args.steps, "batch": args.batch,
        "lr": args.lr, "tau": args.tau, "photos": n_train, "pool_shapes": args.pool, "positives": args.positives,
        "negatives": args.negatives, "matching_weights": checkpoint.repo_path(args.matching), "matching_hash": checkpoint.file_hash(args.matching),
        "train_photos": args.train_photos or "matching training stream, seed 0", "heldout_photos": args.heldout_photos or "held-out shapes, seed 1000", "library_views": len(codes),
        "initial_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-50:])),
        "heldout": metrics, "heldout_shapes": int(len(np.unique(held_ph["shapes"][: args.eval_photos]))),
        "training_seconds": round(elapsed, 1),
        "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": " ".join(["python -m models.train_embedding", *args.argv]),
        "options_in_effect": (f"--photos {args.photos} --steps {args.steps} --batch {args.batch} --negatives {args.negatives} "
                              f"--positives {args.positives} --pool {args.pool} --dim {args.dim} --hidden {args.hidden} "
                              f"--render-hidden {args.render_hidden} --tau {args.tau} --lr {args.lr} --seed {args.seed} --threads {args.threads}"),
    }
    if args.out:
        checkpoint.save(emb, "embedding", args.out, meta)
        args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        args.out.with_suffix(".md").write_text(model_card(meta))
        print(f"saved {args.out} ({args.out.stat().st_size / 2**10:.0f} KB) in {elapsed / 60:.1f} min")
    print(json.dumps({k: meta[k] for k in ("initial_loss", "final_loss", "heldout")}, indent=1))
    args.result = (emb, meta)
    return args.out


def model_card(meta: dict) -> str:
    h = meta.get("heldout") or {}
    recalls = ", ".join(f"top-{k.split('@')[1]}: {v:.2f}" for k, v in h.items() if k.startswith("recall@"))
    return f"""# First-stage embedding (`embedding.pt`)

What: two small projections (photo side: MLP 1,024 → {meta['config']['hidden']} → {meta['config']['dim']}; render side: linear
1,024 → {meta['config']['dim']}) of the codes of the shipped matching network (`{meta['matching_weights']}`, hash
{meta['matching_hash']}), unit-normalised, so that the inner product ranks (photo, view) pairs like the fused head.
Used by the FAISS first stage of the search (shape_library/ann.py) on large libraries; the render side reads only
the stored render codes, so a library's view embeddings are derived without rendering.

Trained with `{meta['command']}` (options in effect: `{meta.get('options_in_effect', '')}`; {meta['training_seconds'] / 60:.1f} min, {meta['hardware']}), seed {meta['seed']}:
{meta['photos']} synthetic training photos ({meta['train_photos']}) of the training shapes of models/train_matching
(var/train library, {meta['library_views']:,} views); per photo the teacher's best {meta['positives']} views among its own
shape and {meta['pool_shapes'] - 1} other shapes of its category, plus {meta['negatives']} views drawn uniformly from the whole
library per batch; loss KL(softmax(−teacher/τ) ‖ softmax(s·⟨e_photo, e_view⟩)), τ = {meta['tau']} rad,
{meta['steps']} steps of {meta['batch']} photos. Loss {meta['initial_loss']:.3f} → {meta['final_loss']:.3f}.

Measured on {h.get('queries', 0)} photos of the {meta.get('heldout_shapes', 'held-out')} held-out shapes: rank of the exhaustive fused-head top-1 among
all {h.get('candidates', 0):,} views by embedding inner product: median {h.get('median_rank', float('nan')):.0f}; recall
{recalls}. Larger libraries: docs/benchmarks.md (FAISS first stage).

Limits: distilled from one set of matching weights (the key of the FAISS index includes both hashes; retrain
when the matching network changes); trained on synthetic photos only, like the matching network.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train_embedding", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("var/train"))
    p.add_argument("--matching", type=Path, default=checkpoint.WEIGHTS_DIR / "matching.pt")
    p.add_argument("--train-photos", default="", help="a cached photo set in --data-dir (default: the matching network's training photos, made when missing)")
    p.add_argument("--heldout-photos", default="", help="likewise for the held-out shapes (default: seed 1000, as train_viewpoint's test photos)")
    p.add_argument("--workers", type=int, default=1, help="processes that make missing photos")
    p.add_argument("--out", type=lambda s: Path(s) if s else None, default=checkpoint.WEIGHTS_DIR / "embedding.pt", help="\"\": do not save")
    p.add_argument("--photos", type=int, default=4000)
    p.add_argument("--eval-photos", type=int, default=150)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--render-hidden", type=int, default=0, help="render side hidden width (0: linear)")
    p.add_argument("--pool", type=int, default=3, help="shapes per teacher pool (own + random of its category)")
    p.add_argument("--positives", type=int, default=32)
    p.add_argument("--negatives", type=int, default=512)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tau", type=float, default=0.05, help="teacher softmax temperature, radians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv=None) -> int:
    import sys

    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
