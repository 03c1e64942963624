"""Write synthetic photo data sets and mosaics of them (see shape_library/synthetic.py).

    python -m shape_library.dataset write --library default --out data/synth --n 1000 --seed 0 \\
        [--split train|heldout|all] [--size 160] [--backgrounds DIR] [--mosaic docs/synthetic_mosaic.png]
    python -m shape_library.dataset mosaic --out docs/synthetic_mosaic.png --n 24 --seed 0 [--library PATH]

`--library` (repeatable) is a mesh folder in any layout the importers know, or
`default` for the project's generated default library.  The meshes are imported
into `--data-dir` (reused between runs) or a temporary data folder.  `write` puts
one image per sample into `--out` plus `manifest.jsonl` (one JSON object per
sample: file, shape id and name, category, pose, box, split, seed, ...) and
`dataset.json` (the configuration).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .importers import import_folder
from .library import ShapeLibrary
from .synthetic import Sample, SyntheticConfig, generate, split_shapes


class DatasetError(Exception):
    pass


def _default_library_folder(data_dir: Path) -> Path:
    folder = data_dir / "default_library"
    if not (folder / "MANIFEST.json").is_file():
        try:
            from .procedural import write_default_library
        except ImportError as exc:
            raise DatasetError(f"the default library is not available ({exc}); pass --library FOLDER") from exc
        written = write_default_library(folder)
        if not (folder / "MANIFEST.json").is_file() and written is not None:
            written = Path(written)
            folder = written.parent if written.is_file() else written
    return folder


def open_library(specs: Sequence[str], data_dir: Path, categories: set[str] | None = None,
                 progress: bool = True) -> tuple[ShapeLibrary, list[int]]:
    """Import every folder of `specs` ('default' = the generated library) into data_dir.

    Returns the library and the ids of the shapes those folders hold (a reused data
    folder may hold others too; they are not used).
    """
    data_dir = Path(data_dir)
    library = ShapeLibrary(data_dir)
    ids: list[int] = []
    for spec in specs:
        try:
            if spec == "default":
                folder, layout = _default_library_folder(data_dir), "manifest"
            else:
                folder, layout = Path(spec), None
                if not folder.is_dir():
                    raise DatasetError(f"library folder not found: {folder}")
        except DatasetError as exc:
            if len(specs) > 1:
                print(f"warning: {exc}; skipping it", file=sys.stderr)
                continue
            raise
        report = import_folder(library, folder, layout=layout, categories=categories, progress=progress)
        for path, err in report.errors:
            print(f"warning: rejected {path}: {err}", file=sys.stderr)
        ids += report.added + report.existing
    ids = sorted(set(ids))
    if not ids:
        raise DatasetError("no shapes to render" + (f" in categories {sorted(categories)}" if categories else ""))
    return library, ids


def select_shapes(library: ShapeLibrary, ids: Sequence[int], split: str, held_out: float, split_seed: int) -> list[int]:
    if split == "all":
        return list(ids)
    wanted = set(ids)
    train, held = split_shapes([s for s in library.shapes() if s.id in wanted], held_out, split_seed)
    chosen = train if split == "train" else held
    if not chosen:
        raise DatasetError(f"the {split} split is empty (held-out fraction {held_out})")
    return chosen


# --------------------------------------------------------------------------- mosaic


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def mosaic(samples: Sequence[Sample], columns: int = 6, scale: float = 1.0, outline: bool = False) -> Image.Image:
    """Samples in a grid, each with its box (green) and a caption: category / name, a, e, theta."""
    if not samples:
        raise ValueError("no samples")
    H, W = samples[0].image.shape[:2]
    cw, ch = int(round(W * scale)), int(round(H * scale))
    cap = 28
    rows = (len(samples) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cw, rows * (ch + cap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(11)
    for i, s in enumerate(samples):
        im = Image.fromarray(s.image).resize((cw, ch), Image.Resampling.BICUBIC) if scale != 1 else Image.fromarray(s.image)
        d = ImageDraw.Draw(im)
        if outline:  # the visible silhouette's edge, to check the mask
            m = s.visible_mask
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            ys, xs = np.nonzero(edge)
            for x, y in zip(xs, ys):
                d.point((x * scale, y * scale), fill=(255, 0, 255))
        if s.box is not None:
            x0, y0, x1, y1 = (v * scale for v in s.box)
            d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 0), width=1)
        x, y = (i % columns) * cw, (i // columns) * (ch + cap)
        sheet.paste(im, (x, y))
        a, e, t, dist = s.pose
        flags = (" occ" if s.occluded_fraction > 0 else "") + (" trunc" if s.truncated else "")
        draw.text((x + 3, y + ch + 1), f"{s.category} / {s.name}"[: max(8, cw // 6)], fill=(0, 0, 0), font=font)
        draw.text((x + 3, y + ch + 14), f"a{a:.0f} e{e:.0f} t{t:.0f} d{dist:.1f}{flags}", fill=(90, 0, 0), font=font)
    return sheet


# --------------------------------------------------------------------------- commands


def _config(args, balance_default: bool) -> SyntheticConfig:
    from .settings import get_settings

    backgrounds = args.backgrounds if args.backgrounds is not None else get_settings().photos_dir
    balance = balance_default if args.balance_categories is None else args.balance_categories
    return SyntheticConfig(
        width=args.width or args.size, height=args.height or args.size, backgrounds=backgrounds,
        balance_categories=balance,
    )


def _write(args, library: ShapeLibrary, ids: list[int]) -> int:
    cfg = _config(args, balance_default=False)
    shape_ids = select_shapes(library, ids, args.split, args.held_out, args.split_seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ext = "jpg" if args.format == "jpg" else "png"
    keep: list[Sample] = []
    with open(out / "manifest.jsonl", "w") as manifest:
        for s in tqdm(generate(library, shape_ids, args.n, args.seed, cfg, start=args.start), total=args.n,
                      desc="synthetic photos", unit="img", disable=args.quiet):
            name = f"{s.index:06d}.{ext}"
            img = Image.fromarray(s.image)
            if ext == "jpg":
                img.save(out / name, quality=95)
            else:
                img.save(out / name)
            rec = {"file": name, **s.record(), "split": args.split}
            if args.masks:
                m = np.where(s.visible_mask, 255, np.where(s.mask, 128, 0)).astype(np.uint8)
                Image.fromarray(m, "L").save(out / f"{s.index:06d}_mask.png")
                rec["mask_file"] = f"{s.index:06d}_mask.png"
            manifest.write(json.dumps(rec) + "\n")
            if args.mosaic and len(keep) < args.mosaic_n:
                keep.append(s)
    meta = {
        "n": args.n, "start": args.start, "seed": args.seed, "split": args.split, "held_out": args.held_out,
        "split_seed": args.split_seed, "libraries": args.library, "categories": args.categories,
        "shape_ids": shape_ids, "config": cfg.to_dict(),
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    if args.mosaic:
        _save(mosaic(keep, args.columns), Path(args.mosaic))
    if not args.quiet:
        print(f"{args.n} images and manifest.jsonl in {out}")
    return 0


def _mosaic(args, library: ShapeLibrary, ids: list[int]) -> int:
    cfg = _config(args, balance_default=True)
    shape_ids = select_shapes(library, ids, args.split, args.held_out, args.split_seed)
    samples = list(generate(library, shape_ids, args.n, args.seed, cfg, start=args.start))
    path = _save(mosaic(samples, args.columns, args.scale, args.outline), Path(args.out))
    if not args.quiet:
        print(path)
    return 0


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shape_library.dataset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--library", action="append", default=None,
                        help="mesh folder, or 'default' for the generated library (repeatable; default: default)")
        sp.add_argument("--data-dir", type=Path, default=None, help="data folder to import into and reuse (default: temporary)")
        sp.add_argument("--categories", nargs="+", default=None, help="only these categories")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--start", type=int, default=0, help="index of the first sample")
        sp.add_argument("--size", type=int, default=160, help="canvas side (pixels)")
        sp.add_argument("--width", type=int, default=None)
        sp.add_argument("--height", type=int, default=None)
        sp.add_argument("--backgrounds", type=Path, default=None, help="folder of background images")
        sp.add_argument("--split", choices=["all", "train", "heldout"], default="all", help="which shapes (split by shape)")
        sp.add_argument("--held-out", type=float, default=0.2, help="held-out fraction of each category")
        sp.add_argument("--split-seed", type=int, default=0)
        sp.add_argument("--balance-categories", action=argparse.BooleanOptionalAction, default=None,
                        help="draw categories uniformly (default: off for write, on for mosaic)")
        sp.add_argument("--columns", type=int, default=6)
        sp.add_argument("--quiet", action="store_true")

    w = sub.add_parser("write", help="write images + manifest.jsonl")
    common(w)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--n", type=int, required=True)
    w.add_argument("--format", choices=["png", "jpg"], default="png")
    w.add_argument("--masks", action="store_true", help="also write NNNNNN_mask.png (255 visible, 128 occluded)")
    w.add_argument("--mosaic", type=Path, default=None, help="also write a mosaic of the first samples here")
    w.add_argument("--mosaic-n", type=int, default=24)

    m = sub.add_parser("mosaic", help="a mosaic PNG of samples with boxes and captions")
    common(m)
    m.add_argument("--out", type=Path, default=Path("docs/synthetic_mosaic.png"))
    m.add_argument("--n", type=int, default=24)
    m.add_argument("--scale", type=float, default=1.0, help="cell magnification")
    m.add_argument("--outline", action="store_true", help="draw the visible mask's edge too")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.library = args.library or ["default"]
    if args.n < 1:
        print("--n must be at least 1", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="synthetic-")))
        try:
            library, ids = open_library(args.library, data_dir, set(args.categories) if args.categories else None,
                                        progress=not args.quiet)
            return _write(args, library, ids) if args.cmd == "write" else _mosaic(args, library, ids)
        except (DatasetError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
