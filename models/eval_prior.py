"""The S1 viewpoint prior in the shape search: how to combine it with the matcher, measured.

    python -m models.eval_prior --library ../shared/shape_library

Two ways to use the viewpoint model's prediction: a hard cut (score only the grid poses within
N° of it, `rN`, and of its front/back flip, `+flip`) and a soft prior (models.viewpoint.PosePrior:
every candidate's score pays `weight` degrees per degree away from the prediction, or from its
flip plus `flip_cost`; the weight optionally scaled by S1's confidence to a power). The soft
prior's weight, flip cost and confidence power, and the default setting, are chosen
on tuning photos (seed + 2000); the tables report other photos (seed), in three scopes:
category known (every shape of it x every grid pose, as experiment 2), shape known (experiment 1)
and shapes never seen in training (experiment 3). The default then runs through
`SearchEngine.search` with refinement, as the service answers. Writes docs/viewpoint_prior.md,
.json and .png, and README's block.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from shape_library.features import FeatureIndex
from shape_library.index import ViewIndex, ViewIndexConfig
from shape_library.search import SearchEngine
from shape_library.settings import get_settings
from shape_library.warm_engine import photo_viewpoint

from .reports import replace_block
from . import checkpoint
from . import matching, viewpoint  # noqa: F401  (registers the models)
from .eval_matching import _rot_err
from .pairs import grid_rotations
from .train_matching import checkpoint_split, prepare_library
from .viewpoint import PosePrior, poses_near

REPO = Path(__file__).resolve().parent.parent
RADII = (30, 45, 60, 90, 120)
WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
FLIP_COSTS = (None, 0.0, 10.0, 20.0, 40.0)
CONFIDENCE_POWERS = (0.0, 1.0, 2.0)   # the weight scaled by S1's confidence ** power (PosePrior.from_prediction)
SOFT_RADII = (None, 90, 60, 45)   # hard cut under the soft prior, for speed (with the flip when it has a cost)


@dataclass
class Photo:
    """One photo's candidate scores (shapes x grid poses, degrees) and its S1 prediction."""
    scores: np.ndarray
    shape_ids: tuple
    true_shape: int
    pose: np.ndarray
    pred: np.ndarray
    conf: float
    vp_ms: float


def _s1(vp, image, box, cat, margin):
    t0 = time.perf_counter()
    angles, conf, _ = photo_viewpoint(vp, image, box, cat, margin)
    return angles.numpy(), conf, (time.perf_counter() - t0) * 1000


@torch.no_grad()
def collect(engine, vp, library, samples, scope: str) -> list[Photo]:
    cats = {s.id: s.category for s in library.shapes()}
    V = len(engine.grid)
    out = []
    for s in tqdm(samples, desc=f"prior {scope}", leave=False):
        cat = cats[s.shape_id]
        ids = (s.shape_id,) if scope != "category" else tuple(x.id for x in library.shapes(cat) if engine.views.has(x.id))
        image = Image.fromarray(s.image)
        code, _ = engine.photo_code(image, s.box)
        codes, _ = engine._codes(ids)
        scores = np.degrees(engine.score_all(code, codes).numpy()).reshape(len(ids), V)
        pred, conf, ms = _s1(vp, image, s.box, cat, engine.views.config.margin)
        out.append(Photo(scores, ids, s.shape_id, np.asarray(s.pose[:3], np.float64), pred, conf, ms))
    return out


class Settings:
    """Evaluates hard-cut and soft-prior settings on collected photos (no network runs)."""

    def __init__(self, grid):
        self.grid = grid
        self.R = grid_rotations(grid).double()
        self.poses = grid.poses()

    def pick(self, ph: Photo, radius, flips: bool, prior: tuple | None):
        """(shape id, grid pose, fraction of candidates scored, whether the true shape and pose bin
        rank in the top 5) under one setting."""
        V = len(self.grid)
        keep = np.ones(V, bool)
        if radius is not None:
            keep[:] = False
            keep[poses_near(self.R, torch.from_numpy(ph.pred), radius, flips).numpy()] = True
            if not keep.any():
                keep[int(self.grid.nearest_index(*ph.pred))] = True
        rank = ph.scores.copy()
        if prior is not None:
            pp = PosePrior.from_prediction(ph.pred, ph.conf, *prior)
            rank = pp.combine(rank, pp.distance(self.poses).numpy()[None, :])
        rank[:, ~keep] = np.inf
        flat = rank.reshape(-1)
        top5 = np.argpartition(flat, 5)[:5] if flat.size > 5 else np.arange(flat.size)
        true = ph.shape_ids.index(ph.true_shape) * V + int(self.grid.nearest_index(*ph.pose))
        si, pi = divmod(int(np.argmin(flat)), V)
        return ph.shape_ids[si], pi, keep.mean(), bool(true in top5 and np.isfinite(flat[true]))

    def measure(self, photos: list[Photo], radius=None, flips=False, prior=None) -> dict:
        errs, shape_ok, frac, hit5 = [], [], [], []
        for ph in photos:
            sid, pi, f, h = self.pick(ph, radius, flips, prior)
            errs.append(np.degrees(_rot_err(self.poses[pi][None], ph.pose[None])[0]))
            shape_ok.append(sid == ph.true_shape)
            frac.append(f)
            hit5.append(h)
        e = np.array(errs)
        return {"acc_pi6": float((e < 30).mean()), "median_deg": float(np.median(e)), "p@5": float(np.mean(hit5)),
                "shape_top1": float(np.mean(shape_ok)), "fraction_scored": float(np.mean(frac))}


def tune_prior(settings: Settings, tune: list[Photo]) -> tuple[dict, tuple]:
    """The (weight, flip_cost, confidence_power) with the best tuning accuracy (ties: smaller median error)."""
    table = {}
    for w in WEIGHTS:
        for fc in FLIP_COSTS:
            for g in CONFIDENCE_POWERS:
                table[(w, fc, g)] = settings.measure(tune, prior=(w, fc, g))
    best = min(table, key=lambda k: (-table[k]["acc_pi6"], table[k]["median_deg"]))
    return {f"w{w}/flip{fc}/conf^{g:g}": r for (w, fc, g), r in table.items()}, best


def setting_list(prior: tuple) -> list[tuple[str, object, bool, tuple | None]]:
    out = [("full", None, False, None)]
    out += [(f"r{r}", r, False, None) for r in RADII] + [(f"r{r}+flip", r, True, None) for r in RADII]
    flips = prior[1] is not None
    out += [("soft" if r is None else f"soft+r{r}{'+flip' if flips else ''}", r, flips, prior) for r in SOFT_RADII]
    return out


def main(argv=None) -> int:
    from shape_library.synthetic import SyntheticConfig, generate

    p = argparse.ArgumentParser(prog="python -m models.eval_prior", description=__doc__)
    p.add_argument("--library", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("var/train"))
    p.add_argument("--matching", type=Path, default=checkpoint.WEIGHTS_DIR / "matching.pt")
    p.add_argument("--viewpoint", type=Path, default=checkpoint.WEIGHTS_DIR / "viewpoint.pt")
    p.add_argument("--photos", type=int, default=120, help="photos per set (tuning and each reported scope)")
    p.add_argument("--seed", type=int, default=1000)
    args = p.parse_args(argv)

    model, meta = checkpoint.load(args.matching)
    vp, _ = checkpoint.load(args.viewpoint)
    library = prepare_library(args.data_dir, args.library, progress=False)
    views = ViewIndex(args.data_dir / "index", library, ViewIndexConfig())
    views.sync()
    engine = SearchEngine(library, FeatureIndex(views, model, checkpoint.file_hash(args.matching)), model,
                          refine_top=get_settings().search_refine_top)   # as the service refines
    settings = Settings(views.config.grid)
    cats = {s.id: s.category for s in library.shapes()}

    def samples(ids, seed):
        out = list(generate(library, ids, args.photos, seed, SyntheticConfig()))
        out.sort(key=lambda s: cats[s.shape_id])   # one candidate matrix per category
        return out

    t_start = time.time()
    train_ids, heldout_ids = checkpoint_split(meta, library)
    seen, unseen = samples(train_ids, args.seed), samples(heldout_ids, args.seed + 1)
    tune = collect(engine, vp, library, samples(train_ids, args.seed + 2000), "category")
    tuning, best_prior = tune_prior(settings, tune)
    scopes = {"category known": collect(engine, vp, library, seen, "category"),
              "shape known": collect(engine, vp, library, seen, "shape"),
              "unseen shapes, shape known": collect(engine, vp, library, unseen, "shape")}
    rows = setting_list(best_prior)
    results = {scope: {name: settings.measure(ph, r, f, pr) for name, r, f, pr in rows} for scope, ph in scopes.items()}

    # default: on the tuning photos, the fewest candidates within one point of the best accuracy
    on_tune = {name: settings.measure(tune, r, f, pr) for name, r, f, pr in rows}
    top = max(r["acc_pi6"] for r in on_tune.values())
    default = min((r["fraction_scored"], name) for name, r in on_tune.items() if r["acc_pi6"] >= top - 0.01)[1]
    spec = next((r, f, pr) for name, r, f, pr in rows if name == default)

    latency = _latency(engine, vp, library, seen[: min(40, len(seen))], rows, cats)
    service = _as_served(engine, vp, library, seen, unseen, spec, cats)
    vp_errs = [np.degrees(_rot_err(ph.pred[None], ph.pose[None])[0]) for ph in scopes["category known"]]
    out = {"photos": args.photos, "seed": args.seed, "tuning_seed": args.seed + 2000,
           "prior": {"weight": best_prior[0], "flip_cost": best_prior[1], "confidence_power": best_prior[2]}, "tuning": tuning, "default": default,
           "default_spec": {"radius_deg": spec[0], "flips": spec[1], "soft": spec[2] is not None},
           "results": results, "latency_ms": latency, "as_served": service, "refine_top": engine.refine_top,
           "viewpoint_ms_mean": float(np.mean([ph.vp_ms for ph in tune])),
           "viewpoint_error": {"acc_pi6": float((np.array(vp_errs) < 30).mean()), "median_deg": float(np.median(vp_errs))},
           "seconds": round(time.time() - t_start, 1)}
    (REPO / "docs").mkdir(exist_ok=True)
    (REPO / "docs" / "viewpoint_prior.json").write_text(json.dumps(out, indent=1))
    _plot(results["category known"], latency, REPO / "docs" / "viewpoint_prior.png")
    block = _table(out)
    (REPO / "docs" / "viewpoint_prior.md").write_text(block)
    replace_block("viewpoint-prior", block)
    print(block)
    return 0


@torch.no_grad()
def _latency(engine, vp, library, samples, rows, cats) -> dict:
    """Mean ms per setting for the ranking step (category known): S1 plus scoring the kept candidates."""
    grid, V = engine.grid, len(engine.grid)
    R, poses = grid_rotations(grid).double(), grid.poses()
    ms = {name: [] for name, *_ in rows}
    for s in samples:
        image = Image.fromarray(s.image)
        ids = tuple(x.id for x in library.shapes(cats[s.shape_id]) if engine.views.has(x.id))
        code, _ = engine.photo_code(image, s.box)
        codes, _ = engine._codes(ids)
        for name, radius, flips, prior in rows:
            t0 = time.perf_counter()
            if radius is None and prior is None:
                scores = engine.score_all(code, codes)
            else:
                pred, conf, _ = _s1(vp, image, s.box, cats[s.shape_id], engine.views.config.margin)
                if radius is None:   # every candidate, as the engine scores them: no gather
                    subset, scores = np.arange(V), engine.score_all(code, codes)
                else:
                    subset = poses_near(R, torch.from_numpy(pred), radius, flips).numpy()
                    rows_idx = (np.arange(len(ids))[:, None] * V + subset[None, :]).reshape(-1)
                    scores = engine.score_all(code, codes[torch.from_numpy(rows_idx)])
                if prior is not None:
                    pp = PosePrior.from_prediction(pred, conf, *prior)
                    scores = pp.combine(scores, torch.deg2rad(pp.distance(poses[subset]).float()).repeat(len(ids)))
            int(torch.argmin(scores))
            ms[name].append((time.perf_counter() - t0) * 1000)
    return {name: float(np.mean(v)) for name, v in ms.items()}


@torch.no_grad()
def _as_served(engine, vp, library, seen, unseen, spec, cats) -> dict:
    """The default setting through SearchEngine.search, with and without refinement."""
    radius, flips, prior = spec
    grid = engine.grid
    R = grid_rotations(grid).double()
    out = {}
    for scope, samples, shape_known in (("category known", seen, False), ("shape known", seen, True),
                                        ("unseen shapes, shape known", unseen, True)):
        served_top = engine.refine_top
        variants = [("", False, served_top), (", refined", True, served_top)] + ([(", refined best 3", True, 3)] if served_top != 3 else [])
        for label, refine, top in variants:
            engine.refine_top = top
            errs, ref_ms = [], []
            for s in tqdm(samples, desc=f"served {scope}{label}", leave=False):
                image = Image.fromarray(s.image)
                cat = cats[s.shape_id]
                pred, conf, _ = _s1(vp, image, s.box, cat, engine.views.config.margin)
                subset = None if radius is None else poses_near(R, torch.from_numpy(pred), radius, flips).numpy()
                pp = None if prior is None else PosePrior.from_prediction(pred, conf, *prior)
                res = engine.search(image, s.box, category=cat, shape_ids=[s.shape_id] if shape_known else None,
                                    top_k=1, refine=refine, pose_subset=subset, prior=pp)
                m = res.matches[0]
                errs.append(np.degrees(_rot_err(np.array([[m.azimuth, m.elevation, m.theta]]), np.asarray(s.pose[:3])[None])[0]))
                ref_ms.append(res.timing_ms["refinement"])
            e = np.array(errs)
            out[f"{scope}{label}"] = {"acc_pi6": float((e < 30).mean()), "median_deg": float(np.median(e)),
                                      "refinement_ms_p50": float(np.median(ref_ms))}
        engine.refine_top = served_top
    return out


def _table(out: dict) -> str:
    pr = out["prior"]
    flip = "" if pr["flip_cost"] is None else f" or from its flip plus {pr['flip_cost']:g}°"
    lines = ["## Viewpoint prior in the search", "",
             f"{out['photos']} synthetic photos per scope (seed {out['seed']}). `rN`: only the grid poses within N° of the "
             "S1 prediction are scored; `+flip`: also those near its front/back flip. `soft`: candidates are ranked by the "
             f"weighted mean (weight {pr['weight']:g}{_conf_note(pr)} on the prior) of the matcher's distance estimate and the prior's, their rotation "
             f"away from the S1 prediction{flip} (`models.viewpoint.PosePrior`; weight, flip cost and confidence power tuned on {out['photos']} other photos, seed "
             f"{out['tuning_seed']}). On these photos the viewpoint network alone reaches Acc@π/6 "
             f"{out['viewpoint_error']['acc_pi6']:.3f}, median {out['viewpoint_error']['median_deg']:.1f}° "
             f"({out['viewpoint_ms_mean']:.1f} ms). Latency: the ranking step, category known (S1 + scoring). "
             "Generated by `python -m models.eval_prior`.", ""]
    scopes = list(out["results"])
    lines += ["| setting | candidates scored | latency (ms) | " + " | ".join(f"{s}: Acc@π/6 / median" for s in scopes) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in scopes) + " |"]
    first = out["results"][scopes[0]]
    for name in first:
        mark = " **(default)**" if name == out["default"] else ""
        cells = " | ".join(f"{out['results'][s][name]['acc_pi6']:.3f} / {out['results'][s][name]['median_deg']:.1f}°" for s in scopes)
        lines.append(f"| {name}{mark} | {100 * first[name]['fraction_scored']:.1f} % | {out['latency_ms'][name]:.1f} | {cells} |")
    sk = out["results"].get("shape known", {})
    if sk:
        lines += ["", "Precision@5 (the true shape and pose bin among the 5 best), shape known: " + ", ".join(
            f"{n} {sk[n]['p@5']:.3f}" for n in ("full", "r30", "soft", out["default"]) if n in sk) + "."]
    lines += ["", f"Default (on the tuning photos, the fewest candidates within one point of the best accuracy): `{out['default']}`. "
              "Category known, the soft prior's shape top-1: "
              f"{first.get('soft', {}).get('shape_top1', float('nan')):.3f} (full search: {first['full']['shape_top1']:.3f}).", "",
              f"The default as the service runs it (`SearchEngine.search`: the grid answer, and refined: 27 rendered poses around "
              f"the best {out.get('refine_top', 3)}, the `search_refine_top` setting; 'best 3' rows refine the best 3 instead, for comparison):", "",
              "| scope | top-1 Acc@π/6 | median error | refinement ms (p50) |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {v['acc_pi6']:.3f} | {v['median_deg']:.1f}° | {v.get('refinement_ms_p50', 0):.0f} |" for k, v in out["as_served"].items()]
    lines += ["", "![prior](docs/viewpoint_prior.png)", ""]
    return "\n".join(lines)


def _conf_note(prior: dict) -> str:
    g = prior.get("confidence_power") or 0
    return f" × the S1 confidence{'' if g == 1 else f' to the power {g:g}'}" if g else ""


def _plot(summary: dict, latency: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    groups = ((False, "o-", "hard cut"), (True, "s--", "hard cut + flip"))
    for flips, style, label in groups:
        names = [f"r{r}+flip" if flips else f"r{r}" for r in RADII]
        fr = [100 * summary[n]["fraction_scored"] for n in names]
        ax[0].plot(fr, [summary[n]["acc_pi6"] for n in names], style, label=label)
        ax[1].plot(fr, [latency[n] for n in names], style, label=label)
    soft = [n for n in summary if n.startswith("soft")]
    fr = [100 * summary[n]["fraction_scored"] for n in soft]
    ax[0].plot(fr, [summary[n]["acc_pi6"] for n in soft], "^-", label="soft prior")
    ax[1].plot(fr, [latency[n] for n in soft], "^-", label="soft prior")
    ax[0].axhline(summary["full"]["acc_pi6"], color="k", lw=0.8, label="full search")
    ax[1].axhline(latency["full"], color="k", lw=0.8, label="full search")
    ax[0].set(xlabel="candidates scored (%)", ylabel="top-1 Acc@π/6 (category known)")
    ax[1].set(xlabel="candidates scored (%)", ylabel="ranking latency (ms)")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
