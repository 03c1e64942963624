"""Data of the label-geometry experiments (tags and Vec2Bundle): library, sprite bank, scene sets,
and the frozen photo-stream features they are trained on.

Every head of a comparison sees the same backbone features (the label backbone of
`models.train_label_backbone`, frozen) and the same scenes; only the neck and the last layer are
trained.  That keeps a
head comparison about the head, and the whole study affordable on a 2-core CPU.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from shape_library.library import ShapeLibrary
from shape_library.synthetic import sample_rng, split_shapes
from shape_library.tag_scenes import SceneComposer, SceneConfig, SpriteBank, build_sprite_bank

from . import checkpoint

#: The tag vocabulary; animals are "none" objects seen in training (in-distribution zero-label);
#: the remaining categories are never seen (out of distribution).
VOCAB = ("aeroplane", "boat", "car", "chair", "sofa", "table")
NONE_IN = ("animal",)
ALL_CATEGORIES = ("aeroplane", "animal", "boat", "bottle", "can", "car", "chair", "cup", "misc", "sofa", "table", "teapot")

SPRITES_PER_SHAPE = 40
#: Where `models.train_label_backbone` writes the shared label backbone by default.
BACKBONE = Path("var/tags/label_backbone.pt")


def slot_split(per_shape: int) -> tuple[range, range, range]:
    """Which of a shape's sprites make training, validation and test scenes (70 / 10 / 20 %)."""
    if per_shape < 3:
        raise ValueError("at least 3 sprites per shape: one each for training, validation and test")
    a = min(per_shape - 2, max(1, int(round(0.7 * per_shape))))
    b = min(per_shape - 1, a + max(1, int(round(0.1 * per_shape))))
    return range(0, a), range(a, b), range(b, per_shape)


def prepare(data_dir: Path, mesh_folder: Path | None, seed: int = 0, per_shape: int = SPRITES_PER_SHAPE,
            size: int = 96, progress: bool = True) -> tuple[ShapeLibrary, SpriteBank]:
    from .train_matching import prepare_library

    library = prepare_library(data_dir, mesh_folder, categories=ALL_CATEGORIES, progress=progress)
    ids = sorted(s.id for s in library.shapes())
    bank = build_sprite_bank(library, ids, per_shape, seed, size,
                             cache=data_dir / f"sprites-{seed}-{per_shape}-{size}-{len(ids)}.npz", progress=progress)
    return library, bank


#: Outlier shapes' ids in a merged sprite bank are offset by this (their library numbers its own from 1).
OUTLIER_ID_OFFSET = 1_000_000


def prepare_outliers(data_dir: Path, n: int, seed: int = 0, per_shape: int = 20, size: int = 96,
                     progress: bool = True) -> SpriteBank:
    """Sprites of n generic outlier shapes (`shape_library.outliers`), for outlier exposure."""
    from shape_library.outliers import outlier_library

    library = outlier_library(data_dir / "outliers", n, seed, progress=progress)
    ids = sorted(s.id for s in library.shapes())[:n]
    bank = build_sprite_bank(library, ids, per_shape, seed, size,
                             cache=data_dir / f"outlier-sprites-{seed}-{per_shape}-{size}-{n}.npz", progress=progress)
    bank.shape_ids = bank.shape_ids + OUTLIER_ID_OFFSET
    return bank


#: Stretched copies of training shapes in a merged sprite bank have their shape's id plus this.
STRETCH_ID_OFFSET = 2_000_000


def prepare_stretched(data_dir: Path, library: ShapeLibrary, per_shape: int, scale: tuple[float, float], seed: int = 0,
                      size: int = 96, progress: bool = True) -> SpriteBank:
    """Sprites of the tag experiments' training shapes (vocabulary and animals) with their meshes
    stretched per axis: more proportions than the ~80 training shapes have. Training scenes only."""
    train_ids, _ = shape_splits(library, seed)
    ids = sorted(s.id for s in library.shapes() if s.id in train_ids and s.category in VOCAB + NONE_IN)
    lo, hi = scale
    bank = build_sprite_bank(library, ids, per_shape, seed + 11, size, progress=progress, shape_scale=(lo, hi),
                             cache=data_dir / f"stretched-sprites-{seed}-{per_shape}-{size}-{len(ids)}-s{round(100 * lo)}-{round(100 * hi)}.npz")
    bank.shape_ids = bank.shape_ids + STRETCH_ID_OFFSET
    return bank


def add_stretch_args(p) -> None:
    """The command-line options of stretched training shapes (train_tags and train_label_backbone)."""
    p.add_argument("--stretched-sprites", type=int, default=0,
                   help="sprites per training shape of its mesh stretched per axis (--shape-scale), added to the training scenes")
    p.add_argument("--shape-scale", type=float, nargs=2, default=(0.75, 1.33), metavar=("LO", "HI"))


def stretched_from_args(args, library: ShapeLibrary) -> SpriteBank | None:
    """The stretched-shape sprites `--stretched-sprites` / `--shape-scale` ask for (None without them)."""
    if not args.stretched_sprites:
        return None
    return prepare_stretched(args.data_dir, library, args.stretched_sprites, tuple(args.shape_scale), args.seed,
                             progress=not args.quiet)


def stretch_flags(args) -> str:
    """Those options as a model card's command repeats them (empty without them)."""
    if not args.stretched_sprites:
        return ""
    return f" --stretched-sprites {args.stretched_sprites} --shape-scale {args.shape_scale[0]:g} {args.shape_scale[1]:g}"


def label_matrix(bank: SpriteBank, rows: list[list[int]], labels: Sequence[str], by: str = "category") -> np.ndarray:
    """Multi-hot (n, K): a scene holds label k when one of its visible sprites has it."""
    index = {lab: i for i, lab in enumerate(labels)}
    keys = bank.categories if by == "category" else np.array([str(s) for s in bank.shape_ids])
    y = np.zeros((len(rows), len(labels)), np.float32)
    for i, rr in enumerate(rows):
        for r in rr:
            k = index.get(str(keys[r]))
            if k is not None:
                y[i, k] = 1.0
    return y


def single_scenes(composer: SceneComposer, rows: np.ndarray, repeats: int, start: int, desc: str,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every given sprite alone in `repeats` scenes (different background, size, place)."""
    S = composer.config.size
    n = len(rows) * repeats
    images = np.zeros((n, S, S, 3), np.uint8)
    which = np.zeros(n, np.int64)
    for i in tqdm(range(n), desc=desc, disable=not progress):
        r = int(rows[i % len(rows)])
        images[i], _ = composer.compose([r], sample_rng(composer.seed, start + i))
        which[i] = r
    return images, which


def cached(path: Path, build, required: Sequence[str] = ()):
    """np.savez cache of a dict of arrays (built again when it lacks a `required` array)."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if all(k in z.files for k in required):
                return {k: z[k] for k in z.files}
    out = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def shape_splits(library: ShapeLibrary, seed: int) -> tuple[set[int], set[int]]:
    train, held = split_shapes(list(library.shapes()), 0.2, seed)
    return set(train), set(held)


@dataclass
class FrozenBackbone:
    """A frozen photo stream (the matching network's, or a tagger's backbone such as the one
    `models.train_label_backbone` fine-tunes): images -> feature maps."""

    weights: Path = checkpoint.WEIGHTS_DIR / "matching.pt"

    def __post_init__(self):
        model, self.meta = checkpoint.load(self.weights)
        self.stream = (model.photo_stream if hasattr(model, "photo_stream") else model.backbone).eval()
        self.key = checkpoint.file_hash(self.weights)
        self.widths = tuple(model.config.widths)

    def provenance(self) -> dict:
        """What a model card says of this backbone: its hash and the matching.pt it started from."""
        return {"sha256": self.key, **{k: self.meta.get(k) for k in ("init_from_sha", "init_from_commit", "steps", "outliers", "command")}}

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 256, desc: str | None = None) -> np.ndarray:
        from shape_library.search import photos_to_tensor

        out = []
        for i in tqdm(range(0, len(images), batch), desc=desc or "features", disable=desc is None):
            out.append(self.stream(photos_to_tensor(images[i:i + batch])).numpy().astype(np.float16))
        return np.concatenate(out) if out else np.zeros((0,), np.float16)


def backbone_card_line(b: dict) -> str:
    """How a model card names the frozen backbone (`FrozenBackbone.provenance()`)."""
    start = (f"the photo stream of matching.pt sha256 {b['init_from_sha']}…" if b.get("init_from_sha")
             else "the matching photo stream (which matching.pt: not recorded in the backbone's checkpoint)")
    sha = f"sha256 {b['sha256']}…, " if b.get("sha256") else ""
    return f"the label backbone ({sha}{start} fine-tuned by `models.train_label_backbone`, then frozen)"


def backbone_command(meta: dict) -> str:
    """The command that made a card's backbone (older backbones did not record it: the default one)."""
    return meta.get("backbone", {}).get("command") or f"python -m models.train_label_backbone --library {meta['library']}"


def backbone_rerun_note(b: dict) -> str:
    """How to get the backbone's starting matching.pt back once it has been retrained (empty when unknown)."""
    if not b.get("init_from_commit"):
        return ""
    return (f"\nThe backbone starts from the `matching.pt` committed in {b['init_from_commit']}: to rerun exactly once it has been "
            f"retrained, `git show {b['init_from_commit']}:models/weights/matching.pt > var/matching-start.pt` and pass "
            "`--init-from var/matching-start.pt` to `models.train_label_backbone`.\n")


def features_cached(backbone: FrozenBackbone, images: np.ndarray, cache_dir: Path, name: str) -> np.ndarray:
    digest = hashlib.sha1(images[:: max(1, len(images) // 64)].tobytes()).hexdigest()[:10]
    path = cache_dir / f"feat-{name}-{backbone.key}-{len(images)}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    f = backbone(images, desc=f"features {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, f)
    return f


def composer(bank: SpriteBank, seed: int, size: int = 64, **kw) -> SceneComposer:
    return SceneComposer(bank, SceneConfig(size=size, **kw), seed)


def train_on_features(model, feats: np.ndarray, y: np.ndarray, steps: int, batch: int, lr: float, seed: int,
                      weight_decay: float = 1e-4, desc: str = "train", progress: bool = True) -> dict:
    """Neck + head on cached backbone features (the backbone stays frozen)."""
    from .vec2bundle import prototype_param_groups

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in prototype_param_groups(model, weight_decay)]
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    model.backbone.eval()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    F_ = torch.from_numpy(feats)
    Y = torch.from_numpy(y)
    for step in bar:
        idx = torch.from_numpy(rng.integers(0, len(feats), batch))
        z = model.from_features(F_[idx].float())
        loss = model.loss_from_logits(z, Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    model.eval()
    return {"final_loss": float(np.mean(losses[-100:])), "first_loss": float(np.mean(losses[:20]))}


@torch.no_grad()
def logits_of(model, feats: np.ndarray, batch: int = 1024) -> torch.Tensor:
    model.eval()
    F_ = torch.from_numpy(feats)
    return torch.cat([model.from_features(F_[i:i + batch].float()) for i in range(0, len(F_), batch)])
