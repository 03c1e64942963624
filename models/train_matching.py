"""Train the geometric differential matching network on synthetic photos.

    python -m models.train_matching --library ../shared/shape_library --out models/weights/matching.pt

Data recipe: the generated default library plus the real meshes of the given
folder (categories aeroplane, boat, car by default), split by shape (20 % of each
category held out for evaluation); photo-like renderings at continuous poses
(shape_library.synthetic); for each photo ~30 grid renderings of the view index,
stratified near / close / far, plus a few of other shapes of its category.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from shape_library.bootstrap import ensure_default_library
from shape_library.importers import import_folder
from shape_library.index import RENDERER_VERSION, ViewIndex, ViewIndexConfig
from shape_library.library import ShapeLibrary
from shape_library.settings import Settings

if TYPE_CHECKING:
    from shape_library.synthetic import SyntheticConfig

from . import checkpoint, registry
from . import matching  # noqa: F401  (registers the models)
from .pairs import PairSampling, grid_rotations, pose_rotations, sample_pairs

CATEGORIES = ("aeroplane", "boat", "car")


def prepare_library(data_dir: Path, mesh_folder: Path | None, categories=CATEGORIES, progress=True) -> ShapeLibrary:
    library = ShapeLibrary(data_dir)
    ensure_default_library(Settings(data_dir=data_dir), library, progress)
    if mesh_folder is not None:
        import_folder(library, mesh_folder, categories=set(categories), progress=progress)
    return library


def shape_split(library: ShapeLibrary, seed: int, held_out: float = 0.2, categories=CATEGORIES) -> tuple[list[int], list[int]]:
    from shape_library.synthetic import split_shapes

    shapes = [s for s in library.shapes() if s.category in categories]
    return split_shapes(shapes, held_out, seed)


def checkpoint_split(meta: dict, library: ShapeLibrary) -> tuple[list[int], list[int]]:
    """The (train, held-out) shapes a checkpoint was trained with, as ids of *this* library.

    Ids follow import order, which differs between machines (a library built before the default
    shapes were imported first numbers them differently), so the ids stored in the checkpoint are
    matched back by "category/name". A shape the library lacks is an error: evaluating without it
    would quietly change the held-out set."""
    names = {int(k): v for k, v in (meta.get("shape_names") or {}).items()}
    if not names:
        return list(meta["train_shapes"]), list(meta["heldout_shapes"])
    here = {f"{s.category}/{s.name}": s.id for s in library.shapes()}
    missing = sorted(names[i] for i in (*meta["train_shapes"], *meta["heldout_shapes"]) if names[i] not in here)
    if missing:
        raise SystemExit(f"the library lacks {len(missing)} shapes the weights were split over: {', '.join(missing[:8])}")
    return [here[names[i]] for i in meta["train_shapes"]], [here[names[i]] for i in meta["heldout_shapes"]]


def photo_set(library: ShapeLibrary, shape_ids: list[int], n: int, seed: int, crop: int, margin: float,
              cache: Path | None = None, progress: bool = True, box_noise: bool = False,
              config: SyntheticConfig | None = None, workers: int = 1) -> dict[str, np.ndarray]:
    """n synthetic photos of the given shapes, reduced to what training needs: the photo-stream crop and labels.

    `workers` > 1 renders chunks of the stream in that many processes; sample i is a pure function of
    (seed, i), so the set is the same whatever the number of workers."""
    from shape_library.synthetic import SyntheticConfig

    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return dict(z)
    config = config or SyntheticConfig()
    if workers > 1 and n >= 2 * workers:
        out = _photo_rows_in_processes(library.data_dir, shape_ids, n, seed, crop, margin, config, workers, progress)
    else:
        out = _photo_rows(library, shape_ids, n, seed, 0, crop, margin, config, progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    return out


def photo_stream(library: ShapeLibrary, shape_ids: list[int], n: int, seed: int, kind: str, data_dir: Path,
                 workers: int = 1) -> dict[str, np.ndarray]:
    """The first n photos (64 px crops, the index's margin) of the stream (seed, shape_ids), as cached in
    data_dir by the training commands (photos-{kind}-{seed}-{count}-64-{shapes}.npz): read from any cached
    set at least as long, since photo i depends only on the seed and i, else made now and cached."""
    from shape_library.index import ViewIndexConfig

    tag = f"photos-{kind}-{seed}-"
    longer = sorted((int(f.name[len(tag):].split("-")[0]), f) for f in Path(data_dir).glob(f"{tag}*-64-{len(shape_ids)}.npz")
                    if f.name[len(tag):].split("-")[0].isdigit())
    for count, f in longer:
        if count >= n:
            with np.load(f) as z:
                return {k: z[k][:n] for k in z.files}
    return photo_set(library, shape_ids, n, seed, 64, ViewIndexConfig().margin, workers=workers,
                     cache=Path(data_dir) / f"{tag}{n}-64-{len(shape_ids)}.npz")


def _photo_rows(library, shape_ids, n: int, seed: int, start: int, crop: int, margin: float, config,
                progress: bool = False) -> dict[str, np.ndarray]:
    """Samples start .. start + n - 1 of the stream, as photo-stream crops and labels."""
    from PIL import Image

    from shape_library.search import photo_crop
    from shape_library.synthetic import generate

    crops = np.zeros((n, crop, crop, 3), np.uint8)
    poses = np.zeros((n, 4), np.float32)
    shapes = np.zeros(n, np.int64)
    boxes = np.zeros((n, 4), np.float32)
    for i, s in enumerate(tqdm(generate(library, shape_ids, n, seed, config, start=start), total=n, desc="synthetic photos", disable=not progress)):
        crops[i] = np.asarray(photo_crop(Image.fromarray(s.image), s.box, crop, margin)[0])
        poses[i] = s.pose
        shapes[i] = s.shape_id
        boxes[i] = s.box
    return {"crops": crops, "poses": poses, "shapes": shapes, "boxes": boxes}


def _photo_chunk(data_dir: Path, shape_ids, n: int, seed: int, start: int, crop: int, margin: float, config) -> dict[str, np.ndarray]:
    return _photo_rows(ShapeLibrary(data_dir), shape_ids, n, seed, start, crop, margin, config)


def _photo_rows_in_processes(data_dir: Path, shape_ids, n: int, seed: int, crop: int, margin: float, config,
                             workers: int, progress: bool) -> dict[str, np.ndarray]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    step = max(1, min(500, -(-n // (4 * workers))))
    parts: dict[int, dict[str, np.ndarray]] = {}
    # spawn: a forked child would inherit this process's GL state
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        jobs = {pool.submit(_photo_chunk, Path(data_dir), list(shape_ids), min(step, n - a), seed, a, crop, margin, config): a
                for a in range(0, n, step)}
        with tqdm(total=n, desc=f"synthetic photos ({workers} processes)", disable=not progress) as bar:
            for job in as_completed(jobs):
                parts[jobs[job]] = job.result()
                bar.update(len(parts[jobs[job]]["shapes"]))
    return {k: np.concatenate([parts[a][k] for a in sorted(parts)]) for k in ("crops", "poses", "shapes", "boxes")}


def training_device(args) -> str:
    """--device, else the settings' device (cuda when a GPU is present)."""
    from shape_library.settings import get_settings

    return getattr(args, "device", None) or get_settings().torch_device()


def hardware_name(device: torch.device | str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def jitter_crops(crops: np.ndarray, rng: np.random.Generator, shift: float = 0.06, scale: float = 0.08) -> np.ndarray:
    """Small random shifts/zooms of the photo crops, so an imprecise box still works."""
    from PIL import Image

    out = np.empty_like(crops)
    S = crops.shape[1]
    for i, c in enumerate(crops):
        s = S * (1 + rng.uniform(-scale, scale))
        cx, cy = S / 2 + rng.uniform(-shift, shift) * S, S / 2 + rng.uniform(-shift, shift) * S
        out[i] = np.asarray(Image.fromarray(c).transform((S, S), Image.Transform.EXTENT, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2),
                                                          resample=Image.Resampling.BILINEAR, fillcolor=(127, 127, 127)))
    return out


class AuxViewpoint(torch.nn.Module):
    """Training-only heads classifying the azimuth, elevation and in-plane bins from a stream's features.

    Trained from scratch on 2 CPU cores, the streams learn pose-aware features far
    faster with this signal than from the pairwise distance regression alone; the
    heads are dropped after training (the shipped network is unchanged).
    """

    def __init__(self, features: int, grid):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(features, n) for n in (grid.n_azimuth, grid.n_elevation, grid.n_theta))

    def loss(self, feats: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        f = feats.flatten(1)
        return sum(torch.nn.functional.cross_entropy(h(f), bins[:, i]) for i, h in enumerate(self.heads)) / 3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train_matching", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", type=Path, help="real mesh folder to add (e.g. ../shared/shape_library)")
    p.add_argument("--data-dir", type=Path, default=Path("var/train"), help="library, view index and photo caches")
    p.add_argument("--out", type=Path, default=checkpoint.WEIGHTS_DIR / "matching.pt")
    p.add_argument("--model", default="matching-cpu")
    p.add_argument("--photos", type=int, default=6000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--max-shapes", type=int, default=0, help="use only this many shapes per category (quick runs)")
    p.add_argument("--grid", default="21,11,11", help="pose grid bins a,e,t (quick runs use a coarser one)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering the view index and the photos")
    p.add_argument("--device", default=None, help="torch device (default: the settings' device, cuda when present)")
    p.add_argument("--aux-weight", type=float, default=0.2,
                   help="weight of the auxiliary viewpoint-bin classification on both streams (0: off)")
    args = p.parse_args(argv)
    train(args)
    return 0


def train(args) -> Path:
    from shape_library.grid import PoseGrid

    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(training_device(args))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    library = prepare_library(args.data_dir, args.library)
    if args.max_shapes:
        keep = [s.id for c in CATEGORIES for s in library.shapes(c)[: args.max_shapes]]
        for s in library.shapes():
            if s.id not in keep:
                library.remove(s.id)
    train_ids, heldout_ids = shape_split(library, args.seed)
    grid = PoseGrid(*(int(x) for x in args.grid.split(",")))
    vcfg = ViewIndexConfig(grid=grid)
    views = ViewIndex(args.data_dir / "index", library, vcfg)
    views.sync(workers=args.workers)
    crops_by_shape = {sid: views.load(sid).crops for sid in train_ids}
    cats = {s.id: s.category for s in library.shapes()}
    same_category = {sid: [o for o in train_ids if cats[o] == cats[sid]] for sid in train_ids}

    model = registry.create(args.model).to(device)
    S = model.config.input_size
    photos = photo_set(library, train_ids, args.photos, args.seed, S, vcfg.margin,
                       cache=args.data_dir / f"photos-train-{args.seed}-{args.photos}-{S}-{len(train_ids)}.npz", workers=args.workers)
    photo_rot = pose_rotations(photos["poses"])
    grid_rot = grid_rotations(grid)
    sampling = PairSampling()

    feat_dim = model.config.widths[-1] * model.feature_size(S) ** 2
    aux_photo, aux_render = AuxViewpoint(feat_dim, grid).to(device), AuxViewpoint(feat_dim, grid).to(device)
    photo_bins = torch.from_numpy(np.stack(grid.bins(grid.nearest_index(*photos["poses"][:, :3].T)), 1).astype(np.int64))
    grid_bins = torch.from_numpy(np.stack(grid.bins(np.arange(len(grid))), 1).astype(np.int64))
    params = list(model.parameters()) + list(aux_photo.parameters()) + list(aux_render.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    from shape_library.features import crops_to_tensor
    from shape_library.search import photos_to_tensor

    model.train()
    ckpt_dir = args.data_dir / "checkpoints"
    losses = []
    bar = tqdm(range(args.steps), desc="train matching")
    for step in bar:
        idx = rng.integers(0, len(photo_rot), args.batch)
        shapes, poses, target = sample_pairs(photo_rot[idx], photos["shapes"][idx], grid_rot, same_category, rng, sampling)
        renders = np.stack([crops_by_shape[s][p] for s, p in zip(shapes.reshape(-1), poses.reshape(-1))])
        x_photo = photos_to_tensor(jitter_crops(photos["crops"][idx], rng)).to(device, non_blocking=True)
        x_render = crops_to_tensor(renders).view(args.batch, sampling.per_photo, 1, S, S).to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        f_photo = model.photo_stream(x_photo)
        f_render = model.render_stream(x_render.flatten(0, 1))
        codes = model.head.render_code(f_render).view(args.batch, sampling.per_photo, -1)
        pred = model.head.score_codes(model.head.photo_code(f_photo), codes)
        loss = torch.nn.functional.mse_loss(pred, target)
        if args.aux_weight:
            loss = loss + args.aux_weight * (aux_photo.loss(f_photo, photo_bins[idx].to(device))
                                             + aux_render.loss(f_render, grid_bins[poses.reshape(-1)].to(device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(torch.nn.functional.mse_loss(pred.detach(), target)))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", rmse_deg=f"{np.degrees(np.sqrt(np.mean(losses[-50:]))):.1f}")
        if (step + 1) % 500 == 0 or step + 1 == args.steps:
            checkpoint.save(model, args.model, ckpt_dir / f"step-{step + 1}.pt", half=False)
    elapsed = time.time() - t_start
    model.cpu()
    meta = {
        "model": args.model, "seed": args.seed, "steps": args.steps, "aux_weight": args.aux_weight, "batch": args.batch, "lr": args.lr, "photos": args.photos,
        "pairs_per_photo": sampling.per_photo, "pair_sampling": sampling.__dict__, "grid": grid.key,
        "view_index": vcfg.key, "renderer": RENDERER_VERSION, "train_shapes": train_ids, "heldout_shapes": heldout_ids,
        "shape_names": {s.id: f"{s.category}/{s.name}" for s in library.shapes()},
        "library": str(args.library) if args.library else None, "final_loss": float(np.mean(losses[-100:])),
        "training_seconds": round(elapsed, 1), "hardware": hardware_name(device), "workers": args.workers,
    }
    checkpoint.save(model, args.model, args.out, meta)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.1f} MB) in {elapsed / 60:.1f} min")
    return args.out


if __name__ == "__main__":
    raise SystemExit(main())
