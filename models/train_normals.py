"""Train and evaluate the S2 surface-normal model: S_exp against S_flat and direct regression.

    python -m models.train_normals --library ../shared/shape_library

Data recipe: the generated default library plus the real meshes of the given folder (every
category), split by shape (20 % of each category held out). Training scenes
(`shape_library/scenes.py`) show 1-3 training shapes on a ground plane, half of them with one
wall or a corner, at random camera elevations, with photo-like appearance; test scenes are built
the same way from the held-out shapes only, with another seed. Ground truth: the renderer's exact
per-pixel camera-frame normals (objects, ground, walls); pixels showing no surface are masked out
of the loss and the metrics. Augmentation: horizontal mirroring (n_x negated).
The three heads share data, architecture, steps, batch, learning rate and seed; only the head and
its loss differ. The S_exp model ships as models/weights/normals.pt; the table goes to
docs/eval_normals.md and the README.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, registry
from . import normals  # noqa: F401  (registers the model)
from .normals import angular_error_deg, error_table, images_to_tensor
from .reports import replace_block

REPO = Path(__file__).resolve().parent.parent
HEAD_NAMES = {"exp": "S_exp (ours)", "flat": "S_flat", "direct": "direct + smooth-L1", "mean": "mean training normal per pixel"}
SUBSETS = ("all surface pixels", "object pixels", "ground and wall pixels")


# --------------------------------------------------------------------------- data


def prepare_library(data_dir: Path, mesh_folder: Path | None, progress: bool = True, default_library: bool = True):
    """The generated default library plus the meshes of `mesh_folder`, every category."""
    from shape_library.bootstrap import ensure_default_library
    from shape_library.importers import import_folder
    from shape_library.library import ShapeLibrary
    from shape_library.settings import Settings

    library = ShapeLibrary(data_dir)
    if default_library:
        ensure_default_library(Settings(data_dir=data_dir), library, progress)
    if mesh_folder is not None:
        import_folder(library, mesh_folder, progress=progress)
    return library


def scene_set(library, shape_ids: list[int], n: int, seed: int, config, cache: Path | None = None,
              progress: bool = True) -> dict[str, np.ndarray]:
    """n scenes reduced to arrays: images (uint8), normals (float16), mask (bool), labels (uint8)."""
    from shape_library.scenes import SceneGenerator

    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return dict(z)
    S = config.size
    out = {"images": np.zeros((n, S, S, 3), np.uint8), "normals": np.zeros((n, S, S, 3), np.float16),
           "mask": np.zeros((n, S, S), bool), "labels": np.zeros((n, S, S), np.uint8),
           "elevation": np.zeros(n, np.float32)}
    with SceneGenerator(library, shape_ids, seed, config) as gen:
        for i in tqdm(range(n), desc=f"scenes (seed {seed})", disable=not progress):
            s = gen.scene(i)
            out["images"][i], out["normals"][i], out["mask"][i], out["labels"][i] = s.image, s.normals, s.mask, s.labels
            out["elevation"][i] = s.pose[1]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **out)
        tmp.replace(cache)
    return out


def mirror(images: np.ndarray, normal_maps: np.ndarray, mask: np.ndarray):
    """Horizontally mirrored scenes: the image flips and n_x changes sign."""
    n = normal_maps[:, :, ::-1].copy()
    n[..., 0] *= -1
    return images[:, :, ::-1].copy(), n, mask[:, :, ::-1].copy()


def batch_tensors(data: dict, idx: np.ndarray, flip: np.ndarray | None = None, object_weight: float = 1.0):
    """Images, normals and the per-pixel loss weights: 0 off surfaces, `object_weight` on objects (and on pixels
    mixing an object with another surface), 1 on the ground and walls."""
    from shape_library.scenes import OBJECT

    images, normals_ = data["images"][idx], data["normals"][idx].astype(np.float32)
    weight = data["mask"][idx] * np.where(data["labels"][idx] >= OBJECT, np.float32(object_weight), np.float32(1.0))
    if flip is not None and flip.any():
        images, normals_, weight = images.copy(), normals_.copy(), weight.copy()
        images[flip], normals_[flip], weight[flip] = mirror(images[flip], normals_[flip], weight[flip])
    return images_to_tensor(images), torch.from_numpy(normals_), torch.from_numpy(weight.astype(np.float32))


# --------------------------------------------------------------------------- training and evaluation


def train_one(head: str, data: dict, args, progress: bool = True) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = registry.create("normals-cpu", head=head, input_size=args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    model.train()
    n = len(data["images"])
    losses = []
    bar = tqdm(range(args.steps), desc=f"train normals ({head})", disable=not progress)
    for _ in bar:
        idx = rng.integers(0, n, args.batch)
        x, y, m = batch_tensors(data, idx, rng.random(args.batch) < 0.5, getattr(args, "object_weight", 1.0))
        loss = model.loss(x, y, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    k = max(1, min(50, len(losses) // 4))
    return model, {"loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:]))}


@torch.no_grad()
def predict_set(model, data: dict, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(data["images"]), batch):
        out.append(model.predict(images_to_tensor(data["images"][i:i + batch])).numpy())
    return np.concatenate(out)


def subset_masks(data: dict) -> dict[str, np.ndarray]:
    from shape_library.scenes import GROUND, MIXED, OBJECT, WALL

    lab, m = data["labels"], data["mask"]
    return {"all surface pixels": m, "object pixels": m & (lab >= OBJECT) & (lab != MIXED),
            "ground and wall pixels": m & ((lab == GROUND) | (lab == WALL))}


def evaluate(pred: np.ndarray, data: dict) -> dict:
    truth = torch.from_numpy(data["normals"].astype(np.float32))
    err = angular_error_deg(torch.from_numpy(pred), truth)
    return {name: error_table(err[torch.from_numpy(m)]) for name, m in subset_masks(data).items()}


def mean_normal_baseline(train: dict, n_test: int) -> np.ndarray:
    """A trivial reference: at each pixel, the normalised mean of the training normals there."""
    s = train["normals"].astype(np.float32).sum(0)
    s /= np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), 1e-6)
    return np.broadcast_to(s, (n_test,) + s.shape).copy()


# --------------------------------------------------------------------------- reports


def examples_png(path: Path, data: dict, preds: dict[str, np.ndarray], k: int = 6, scale: int = 2) -> None:
    """Rows of scenes: input | truth | each head's prediction, colour coded (n + 1) / 2."""
    from PIL import Image, ImageDraw

    from shape_library.scenes import normals_to_rgb

    m = data["mask"]
    idx = np.linspace(0, len(m) - 1, k).astype(int)
    cols = ["input", "truth"] + [HEAD_NAMES[h].split(" (")[0] for h in preds]
    S = data["images"].shape[1]
    rows = []
    for i in idx:
        tiles = [data["images"][i], normals_to_rgb(data["normals"][i].astype(np.float32), m[i])]
        tiles += [normals_to_rgb(p[i], m[i]) for p in preds.values()]
        rows.append(np.concatenate(tiles, 1))
    grid = np.concatenate(rows, 0)
    im = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (im.width, im.height + 16), (255, 255, 255))
    canvas.paste(im, (0, 16))
    dr = ImageDraw.Draw(canvas)
    for j, c in enumerate(cols):
        dr.text((j * S * scale + 3, 2), c, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def write_reports(results: dict, meta: dict, out_md: Path) -> str:
    lines = [
        "## S2 surface normals (held-out shapes, rendered scenes)",
        "",
        f"{meta['eval_scenes']} scenes ({meta['size']}×{meta['size']}) of {meta['heldout_shapes']} shapes never seen in "
        "training, on a ground plane, half with walls, photo-like appearance; error = angle between the predicted and "
        "the rendered camera-frame normal, over every pixel showing a surface (sky masked out). Same data, "
        "architecture (`normals-cpu`, a small U-Net), steps and seed for every head. Generated by "
        "`python -m models.train_normals`.",
        "",
        "| head | pixels | n | mean | median | < 11.25° | < 22.5° | < 30° |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for head, res in results.items():
        for subset in SUBSETS:
            r = res.get(subset, {})
            if not r.get("pixels"):
                continue
            lines.append(f"| {HEAD_NAMES[head]} | {subset} | {r['pixels']:,} | {r['mean_deg']:.1f}° | {r['median_deg']:.1f}° | "
                         f"{100 * r['within_11.25']:.1f} % | {100 * r['within_22.5']:.1f} % | {100 * r['within_30']:.1f} % |")
    if all(h in results for h in ("exp", "flat", "direct")):
        parts = []
        for subset in ("all surface pixels", "object pixels"):
            e, best = results["exp"][subset]["mean_deg"], min(results[h][subset]["mean_deg"] for h in ("flat", "direct"))
            parts.append(f"{abs(e - best):.1f}° {'ahead of' if e < best else 'behind'} the better baseline on {subset}")
        lines += ["", f"Mean error of S_exp: {parts[0]}, {parts[1]} (the sign classifier's mistakes show as patches with "
                  "a flipped n_x or n_y in the figure)."]
    lines += ["", f"Thesis reference (NYUv2, real indoor photos, VGG16 encoder-decoder + S_exp): mean 19.7°, median 12.5°. "
              f"Training: {meta['steps']} steps of {meta['batch']} scenes per head, {meta['train_scenes']} scenes of "
              f"{meta['train_shapes']} shapes (+ mirrored), object pixels weighted ×{meta.get('object_weight', 1.0):g} in the loss, "
              f"seed {meta['seed']}, {meta['hardware']}, "
              f"{meta['minutes_per_head']:.1f} min per head. Ground and walls are planes whose normal follows from the "
              "camera's elevation, so they are the easy part; the object rows are the harder test.",
              "", "![normals](docs/normals_examples.png)", ""]
    text = "\n".join(lines) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text.replace("](docs/", "]("))
    return text


def model_card(path: Path, meta: dict, results: dict) -> None:
    r = results["exp"]["all surface pixels"]
    o = results["exp"]["object pixels"]
    path.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1))
    path.with_suffix(".md").write_text(
        f"# S2 surface-normal model (`{path.name}`)\n\n"
        f"- model: `normals-cpu` (U-Net, widths {meta['widths']}, {meta['parameters']:,} parameters), dense S_exp head: "
        "|n| = spherical_exp over 3 channels + 4 sign classes of (N_x, N_y) per pixel; the head works with N_z < 0 "
        "(thesis convention), the model's `predict` and the API return the camera-frame normal facing the viewer "
        "(n_z > 0, contract camera: -z forward, +y up)\n"
        f"- input: RGB {meta['size']}×{meta['size']} (any multiple of 16 runs), scaled to [-0.5, 0.5]\n"
        f"- data: {meta['train_scenes']} rendered scenes (`shape_library/scenes.py`, 1-3 shapes on a ground plane, "
        f"half with walls, photo-like appearance) of {meta['train_shapes']} shapes (default library + "
        f"`{meta['library']}`), mirrored; {meta['heldout_shapes']} shapes held out for the test scenes\n"
        f"- training: {meta['steps']} steps x {meta['batch']}, AdamW lr {meta['lr']}, one-cycle, object pixels weighted "
        f"x{meta.get('object_weight', 1.0):g} in the loss, seed {meta['seed']}, "
        f"{meta['minutes_per_head']:.1f} min per head on {meta['hardware']} "
        f"({'scenes read from the cache' if meta['data_minutes'] < 0.5 else 'scene rendering: %.1f min' % meta['data_minutes']})\n"
        f"- held-out scenes, all surface pixels: mean {r['mean_deg']:.1f}°, median {r['median_deg']:.1f}°, "
        f"{100 * r['within_11.25']:.1f} / {100 * r['within_22.5']:.1f} / {100 * r['within_30']:.1f} % within "
        f"11.25 / 22.5 / 30°; object pixels: mean {o['mean_deg']:.1f}°, median {o['median_deg']:.1f}°\n"
        "- limits: synthetic scenes only (no real photos with normals here); objects are the library's categories "
        "standing upright; low resolution\n"
        f"- rerun: `{meta['command']}`\n\nFull table: docs/eval_normals.md\n")


# --------------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train_normals", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", type=Path, help="real mesh folder to add (e.g. ../shared/shape_library)")
    p.add_argument("--data-dir", type=Path, default=Path("var/normals"))
    p.add_argument("--out", type=Path, default=checkpoint.WEIGHTS_DIR / "normals.pt")
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--eval-scenes", type=int, default=300)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads", default="exp,flat,direct")
    p.add_argument("--object-weight", type=float, default=1.0,
                   help="loss weight of object pixels relative to ground and wall pixels (they are ~7 %% of the pixels)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-reports", action="store_true", help="train and print only (tests, quick runs)")
    p.add_argument("--no-default-library", action="store_true",
                   help="only the meshes of --library, not the generated default shapes (tests, quick runs)")
    return p.parse_args(argv)


def run(args) -> dict:
    from shape_library.scenes import SceneConfig
    from shape_library.synthetic import split_shapes

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not getattr(args, "no_progress", False)
    library = prepare_library(args.data_dir, args.library, progress, not getattr(args, "no_default_library", False))
    train_ids, heldout_ids = split_shapes(library.shapes(), 0.2, args.seed)
    config = SceneConfig(size=args.size)
    key = f"{zlib.crc32(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()):08x}"
    t0 = time.time()
    train = scene_set(library, train_ids, args.scenes, args.seed, config, progress=progress,
                      cache=args.data_dir / f"scenes-train-{args.seed}-{args.scenes}-{len(train_ids)}-{key}.npz")
    test = scene_set(library, heldout_ids, args.eval_scenes, args.seed + 1000, config, progress=progress,
                     cache=args.data_dir / f"scenes-test-{args.seed + 1000}-{args.eval_scenes}-{len(heldout_ids)}-{key}.npz")
    data_minutes = (time.time() - t0) / 60
    results, preds, minutes, shipped = {}, {}, [], None
    for head in args.heads.split(","):
        t0 = time.time()
        model, info = train_one(head, train, args, progress)
        minutes.append((time.time() - t0) / 60)
        preds[head] = predict_set(model, test)
        results[head] = {**evaluate(preds[head], test), **info}
        print(head, json.dumps({k: results[head][k] for k in ("all surface pixels", "object pixels", "loss_first", "loss_last")}))
        if head == "exp":
            shipped = model
    results["mean"] = evaluate(mean_normal_baseline(train, len(test["images"])), test)
    ref = shipped or model
    meta = {"model": "normals-cpu", "seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
            "object_weight": args.object_weight,
            "size": args.size, "widths": list(ref.config.widths), "parameters": sum(p.numel() for p in ref.parameters()),
            "train_scenes": args.scenes, "eval_scenes": args.eval_scenes, "train_shapes": len(train_ids),
            "heldout_shapes": len(heldout_ids), "library": str(args.library), "scene_config": config.to_dict(),
            "hardware": (f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if not torch.cuda.is_available()
                         else torch.cuda.get_device_name()),
            "minutes_per_head": float(np.mean(minutes)), "data_minutes": data_minutes,
            "command": f"python -m models.train_normals --library {args.library} --scenes {args.scenes} --eval-scenes "
                       f"{args.eval_scenes} --size {args.size} --steps {args.steps} --batch {args.batch} --lr {args.lr} "
                       f"--object-weight {args.object_weight} --seed {args.seed}"}
    if not args.no_reports and shipped is not None:
        checkpoint.save(shipped, "normals-cpu", args.out, meta={k: meta[k] for k in ("seed", "steps", "size")})
        model_card(args.out, meta, results)
        block = write_reports(results, meta, REPO / "docs" / "eval_normals.md")
        (REPO / "docs" / "eval_normals.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        examples_png(REPO / "docs" / "normals_examples.png", test, {h: preds[h] for h in ("exp", "flat", "direct") if h in preds})
        replace_block("eval-normals", block)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
