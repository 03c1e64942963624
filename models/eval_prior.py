"""The S1 viewpoint prior in the shape search: candidates scored vs accuracy and latency.

    python -m models.eval_prior --library ../shared/shape_library

For held-out synthetic photos (category given, as experiment 2 of the shape search: every shape of
the category x every grid pose), the full search is compared with searches that score only the
grid poses within a radius of the viewpoint model's prediction (and of its front/back flip).
Writes docs/viewpoint_prior.md, .json and .png, and README's block.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from shape_library.features import FeatureIndex
from shape_library.index import ViewIndex, ViewIndexConfig
from shape_library.search import SearchEngine, photo_crop, photos_to_tensor

from .reports import replace_block
from . import checkpoint
from . import matching, viewpoint  # noqa: F401  (registers the models)
from .eval_matching import _rot_err
from .pairs import grid_rotations
from .train_matching import prepare_library
from .viewpoint import poses_near

REPO = Path(__file__).resolve().parent.parent
RADII = (30, 45, 60, 90, 120)


def main(argv=None) -> int:
    from shape_library.synthetic import SyntheticConfig, generate

    p = argparse.ArgumentParser(prog="python -m models.eval_prior", description=__doc__)
    p.add_argument("--library", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("var/train"))
    p.add_argument("--matching", type=Path, default=checkpoint.WEIGHTS_DIR / "matching.pt")
    p.add_argument("--viewpoint", type=Path, default=checkpoint.WEIGHTS_DIR / "viewpoint.pt")
    p.add_argument("--photos", type=int, default=120)
    p.add_argument("--seed", type=int, default=1000)
    args = p.parse_args(argv)

    model, meta = checkpoint.load(args.matching)
    vp, _ = checkpoint.load(args.viewpoint)
    library = prepare_library(args.data_dir, args.library, progress=False)
    views = ViewIndex(args.data_dir / "index", library, ViewIndexConfig())
    views.sync()
    engine = SearchEngine(library, FeatureIndex(views, model, checkpoint.file_hash(args.matching)), model)
    grid = views.config.grid
    R_grid = grid_rotations(grid).double()
    cats = {s.id: s.category for s in library.shapes()}
    photos = list(generate(library, meta["train_shapes"], args.photos, args.seed, SyntheticConfig()))
    photos.sort(key=lambda s: cats[s.shape_id])  # one candidate matrix per category

    settings = [("full", None, False)] + [(f"r{r}", r, False) for r in RADII] + [(f"r{r}+flip", r, True) for r in RADII]
    rows = {name: {"err": [], "frac": [], "ms": []} for name, _, _ in settings}
    vp_ms, vp_errs = [], []
    with torch.no_grad():
        for s in tqdm(photos, desc="prior"):
            cat = cats[s.shape_id]
            ids = tuple(x.id for x in library.shapes(cat) if views.has(x.id))
            code, _ = engine.photo_code(Image.fromarray(s.image), s.box)
            codes, owner = engine._codes(ids)
            t0 = time.perf_counter()
            crop, _ = photo_crop(Image.fromarray(s.image), s.box, vp.config.input_size, views.config.margin)
            pred, _ = vp.predict(photos_to_tensor(np.asarray(crop)[None]), [cat])
            vp_ms.append((time.perf_counter() - t0) * 1000)
            vp_errs.append(np.degrees(_rot_err(pred.numpy().astype(np.float64), np.asarray(s.pose[:3])[None])[0]))
            V = len(grid)
            for name, radius, flips in settings:
                t0 = time.perf_counter()
                if radius is None:
                    scores, rows_idx = engine.score_all(code, codes), None
                else:
                    subset = poses_near(R_grid, pred[0], radius, flips).numpy()
                    if len(subset) == 0:
                        subset = np.array([int(grid.nearest_index(*pred[0].numpy()))])
                    rows_idx = (np.arange(len(ids))[:, None] * V + subset[None, :]).reshape(-1)
                    scores = engine.score_all(code, codes[torch.from_numpy(rows_idx)])
                best = int(torch.argmin(scores))
                flat = best if rows_idx is None else int(rows_idx[best])
                ms = (time.perf_counter() - t0) * 1000
                err = np.degrees(_rot_err(grid.poses(flat % V)[None], np.asarray(s.pose[:3])[None])[0])
                rows[name]["err"].append(err)
                rows[name]["frac"].append(1.0 if rows_idx is None else len(rows_idx) / len(codes))
                rows[name]["ms"].append(ms + (0 if radius is None else vp_ms[-1]))
    vp_err = {"acc_pi6": float((np.array(vp_errs) < 30).mean()), "median_deg": float(np.median(vp_errs))}
    summary = {}
    for name, r in rows.items():
        e = np.array(r["err"])
        summary[name] = {"acc_pi6": float((e < 30).mean()), "median_deg": float(np.median(e)),
                         "fraction_scored": float(np.mean(r["frac"])), "ms_mean": float(np.mean(r["ms"]))}
    full = summary["full"]["acc_pi6"]
    ok = [(summary[n]["fraction_scored"], n) for n in summary if n != "full" and summary[n]["acc_pi6"] >= full - 0.01]
    default = min(ok)[1] if ok else None
    out = {"photos": len(photos), "seed": args.seed, "viewpoint_ms_mean": float(np.mean(vp_ms)), "settings": summary,
           "default": default, "viewpoint_error": vp_err}
    (REPO / "docs").mkdir(exist_ok=True)
    (REPO / "docs" / "viewpoint_prior.json").write_text(json.dumps(out, indent=1))
    _plot(summary, REPO / "docs" / "viewpoint_prior.png")
    block = _table(out)
    (REPO / "docs" / "viewpoint_prior.md").write_text(block)
    replace_block("viewpoint-prior", block)
    print(block)
    return 0


def _table(out: dict) -> str:
    lines = ["## Viewpoint prior in the search", "",
             f"{out['photos']} synthetic photos, category given (every shape of it x the grid poses are the candidates). "
             "`rN`: only the grid poses within N° of the S1 prediction are scored; `+flip`: also those near its "
             "front/back flip. Latency: scoring plus, for the pruned searches, the viewpoint network "
             f"({out['viewpoint_ms_mean']:.1f} ms; on these photos its own Acc@π/6 is "
             f"{out['viewpoint_error']['acc_pi6']:.3f}, median {out['viewpoint_error']['median_deg']:.1f}°). "
             "Generated by `python -m models.eval_prior`.", "",
             "| setting | candidates scored | top-1 Acc@π/6 | median error | latency (ms) |", "| --- | --- | --- | --- | --- |"]
    for name, r in out["settings"].items():
        mark = " **(default)**" if name == out["default"] else ""
        lines.append(f"| {name}{mark} | {100 * r['fraction_scored']:.1f} % | {r['acc_pi6']:.3f} | {r['median_deg']:.1f}° | {r['ms_mean']:.1f} |")
    lines += ["", ("Default: the setting scoring the fewest candidates whose accuracy stays within one point of the full "
                   f"search: `{out['default']}`." if out["default"] else
                   "No pruned setting keeps the accuracy within one point of the full search: the prior stays off by default."),
              "", "![prior](docs/viewpoint_prior.png)", ""]
    return "\n".join(lines)


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for flips, style in ((False, "o-"), (True, "s--")):
        names = [f"r{r}+flip" if flips else f"r{r}" for r in RADII]
        fr = [100 * summary[n]["fraction_scored"] for n in names]
        ax[0].plot(fr, [summary[n]["acc_pi6"] for n in names], style, label="with flip" if flips else "prior only")
        ax[1].plot(fr, [summary[n]["ms_mean"] for n in names], style, label="with flip" if flips else "prior only")
    ax[0].axhline(summary["full"]["acc_pi6"], color="k", lw=0.8, label="full search")
    ax[1].axhline(summary["full"]["ms_mean"], color="k", lw=0.8, label="full search")
    ax[0].set(xlabel="candidates scored (%)", ylabel="top-1 Acc@π/6")
    ax[1].set(xlabel="candidates scored (%)", ylabel="latency (ms)")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
