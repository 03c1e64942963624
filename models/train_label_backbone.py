"""Fine-tune the photo stream for the label experiments (tags and Vec2Bundle), once, end to end.

    python -m models.train_label_backbone --library ../shared/shape_library

The matching network's photo stream, frozen, is a poor category feature (a 1024 -> 256 MLP on it
reaches 54 % top-1 on its own training scenes).  This run starts from it and trains it end to end
on two tasks at once: the category tags of the composed scenes with independent sigmoids (a
*baseline* loss, so the shared features do not favour the quasibinary head) and the fine-grained
shape class of single-object scenes with a linear softmax (not the RBF head, same reason).  The
heads are thrown away; `models.train_tags` and `models.train_hierarchy` freeze the result and train
every head of their comparisons on it.  Only training scenes are used, and only the tag experiments'
training shapes: the fine-grained task covers the vocabulary's training shapes and the animals, so
neither the vocabulary shapes the category test holds out nor the out-of-vocabulary categories shape
these features (the fine-grained tag setting and Vec2Bundle then put heads over classes the backbone
never learnt as classes).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import checkpoint
from .label_data import BACKBONE, NONE_IN, add_stretch_args, VOCAB, prepare, prepare_outliers, shape_splits, stretch_flags, stretched_from_args
from .matching import MatchingNet, _stream
from .tagger import TaggerConfig


class TwoTaskNet(nn.Module):
    def __init__(self, widths, n_tags: int, n_fine: int, hidden: int = 256, feat: int = 1024):
        super().__init__()
        self.backbone = _stream(3, widths)
        self.tags = nn.Sequential(nn.Flatten(), nn.Linear(feat, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(hidden, n_tags))
        self.fine = nn.Sequential(nn.Flatten(), nn.Linear(feat, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(hidden, n_fine))


def augment(images: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    from shape_library.search import photos_to_tensor

    x = images.copy()
    flip = rng.random(len(x)) < 0.5
    x[flip] = x[flip, :, ::-1]
    t = photos_to_tensor(x)
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (len(x), 1, 1, 1)).astype(np.float32))
    return (t + 0.5) * gain - 0.5


INIT_FROM = checkpoint.WEIGHTS_DIR / "matching.pt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train_label_backbone", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("var/tags"))
    p.add_argument("--out", type=Path, default=BACKBONE)
    p.add_argument("--scenes", type=int, default=24000, help="as models.train_tags (reuses its cached scenes)")
    p.add_argument("--sprites-per-shape", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3, help="as models.train_hierarchy (reuses its cached scenes)")
    p.add_argument("--multi-scenes", type=int, default=12000, help="as models.train_hierarchy")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--init-from", type=Path, default=INIT_FROM,
                   help="matching network whose photo stream starts the backbone ('none': from scratch, see --widths)")
    p.add_argument("--widths", default="", help="channel widths of a backbone trained from scratch, e.g. 48,96,128,128,96")
    p.add_argument("--outliers", type=int, default=0, help="as models.train_tags: generic outlier shapes in the tag scenes")
    p.add_argument("--outlier-share", type=float, default=0.15)
    add_stretch_args(p)
    return p


def run(args) -> dict:
    """Train, save to args.out (a tagger checkpoint whose backbone is the result), return its meta."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from .train_hierarchy import build_parser as hier_parser, class_labels, datasets
    from .train_tags import build_parser as tag_parser, scene_sets

    library, bank = prepare(args.data_dir, args.library, args.seed, args.sprites_per_shape, progress=not args.quiet)
    common = ["--data-dir", str(args.data_dir), "--seed", str(args.seed), "--sprites-per-shape", str(args.sprites_per_shape), "--quiet"]
    targs = tag_parser().parse_args(common + ["--scenes", str(args.scenes), "--outliers", str(args.outliers),
                                              "--outlier-share", str(args.outlier_share)])
    outliers = prepare_outliers(args.data_dir, args.outliers, args.seed, progress=not args.quiet) if args.outliers else None
    stretched = stretched_from_args(args, library)
    tags = scene_sets(bank, library, targs, "category", outliers, stretched)[0]["train"]
    ids, labels, _ = class_labels(library, bank)
    hargs = hier_parser().parse_args(common + ["--repeats", str(args.repeats), "--multi-scenes", str(args.multi_scenes)])
    fine = datasets(bank, ids, hargs)["train"]
    # Only shapes the tag experiments train on: neither the vocabulary shapes their category test holds out
    # nor the out-of-vocabulary categories may shape the features those tests are read from.
    train_ids, _ = shape_splits(library, args.seed)
    cats = {s.id: s.category for s in library.shapes()}
    allowed = np.array([int(i) in train_ids and cats[int(i)] in VOCAB + NONE_IN for i in ids])
    fine_rows = np.nonzero(allowed[fine["targets"]])[0]

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    scratch = str(args.init_from).lower() == "none"
    asked = tuple(int(w) for w in args.widths.split(",")) if args.widths else None
    if scratch:
        widths = asked or TaggerConfig().widths
    else:
        matching, _ = checkpoint.load(args.init_from)
        widths = tuple(matching.config.widths)
        if asked and asked != widths:
            raise SystemExit(f"--widths {args.widths} differ from {args.init_from}'s {widths}: pass --init-from none")
    net = TwoTaskNet(widths, len(VOCAB), len(labels), feat=widths[-1] * MatchingNet.feature_size(64) ** 2)
    if not scratch:
        net.backbone.load_state_dict(matching.photo_stream.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    half = args.batch // 2
    t0 = time.time()
    losses = []
    bar = tqdm(range(args.steps), desc="label backbone", disable=args.quiet)
    net.train()
    for step in bar:
        it = rng.integers(0, len(tags["images"]), half)
        jf = fine_rows[rng.integers(0, len(fine_rows), half)]
        x = augment(np.concatenate([tags["images"][it], fine["images"][jf]]), rng)
        f = net.backbone(x)
        loss = (F.binary_cross_entropy_with_logits(net.tags(f[:half]), torch.from_numpy(tags["labels"][it]))
                + F.cross_entropy(net.fine(f[half:]), torch.from_numpy(fine["targets"][jf])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    net.eval()
    # Stored as a tagger (its head untrained and unused) so the usual checkpoint loader reads it.
    from . import registry, tagger  # noqa: F401

    model = registry.create("tagger-cpu", labels=VOCAB, head="sigmoid", widths=widths)
    model.backbone.load_state_dict(net.backbone.state_dict())
    meta = {"seed": args.seed, "init_from_sha": None if scratch else checkpoint.file_hash(args.init_from),
            "init_from_commit": None if scratch else checkpoint.git_commit_for(args.init_from), "widths": list(widths),
            "outliers": args.outliers, "outlier_share": args.outlier_share if args.outliers else 0.0,
            "stretched_sprites": args.stretched_sprites, "steps": args.steps, "batch": args.batch,
            "lr": args.lr, "minutes": (time.time() - t0) / 60, "first_loss": float(np.mean(losses[:20])),
            "final_loss": float(np.mean(losses[-100:])), "fine_shapes": int(allowed.sum()),
            "command": (f"python -m models.train_label_backbone --library {args.library} --steps {args.steps} --batch {args.batch} --seed {args.seed}"
                        + (f" --outliers {args.outliers} --outlier-share {args.outlier_share:g}" if args.outliers else "")
                        + stretch_flags(args)
                        + (f" --init-from none --widths {','.join(map(str, widths))}" if scratch else "")
                        + ("" if scratch else checkpoint.flag_unless_default("--init-from", args.init_from, INIT_FROM))
                        + checkpoint.flag_unless_default("--out", args.out, BACKBONE))}
    checkpoint.save(model, "tagger-cpu", args.out, meta=meta)
    return meta


def main(argv=None) -> int:
    print(json.dumps(run(build_parser().parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
