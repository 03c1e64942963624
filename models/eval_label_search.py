"""What the tagger and the Vec2Bundle hierarchy do for the shape search.

    python -m models.eval_label_search --library ../shared/shape_library

1. *No match*: photos of objects the library does not hold (animals, bottles, cups, cans, teapots,
   misc. shapes) and photos of library objects, searched in the aeroplane/boat/car library of the
   matching experiments.  How often is `no_match` said, by the matching score's calibrated
   threshold alone, by the tagger alone (none of the searched categories above its threshold), and
   by either (what `/v1/search` does)?
2. *Bundle-restricted search*: photos of library shapes; the full search against a search
   restricted to the shapes of the DARTS bundle at several trade-offs: shape top-1 accuracy, pose
   top-1 Acc@pi/6, the share of candidates scored and the latency (bundle prediction included).
   Every row searches as `/v1/search` does by default (the S1 viewpoint prior and refinement of the
   best grid answer, `shape_library.warm_engine.search`), except the one row that shows the matcher
   alone (no prior, no refinement) for reference.
Writes docs/eval_label_search.md / .json and README's block.
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
from shape_library.search import SearchEngine
from shape_library import warm_engine
from shape_library.warm_engine import Tagger, class_probabilities, tag_filtered_ids

from . import checkpoint
from . import matching, tagger  # noqa: F401  (registers the models)
from .bundle_predictor import BundlePredictor
from .eval_matching import _rot_err
from .label_data import ALL_CATEGORIES
from .reports import replace_block
from .train_matching import prepare_library

REPO = Path(__file__).resolve().parent.parent
TRADEOFFS = (0.0, 0.25, 0.5, 0.75)
MATCHER_ONLY = "full search, matcher alone (no prior, no refinement)"


def _name_key(shape) -> tuple[str, str]:
    return shape.category, shape.name


def _photos(library, ids, n, seed):
    from shape_library.synthetic import SyntheticConfig, generate

    return list(generate(library, ids, n, seed, SyntheticConfig()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.eval_label_search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("var/train"), help="the search library (its index is reused)")
    p.add_argument("--label-data-dir", type=Path, default=Path("var/tags"), help="library with every category (for OOD photos)")
    p.add_argument("--photos", type=int, default=150)
    p.add_argument("--seed", type=int, default=5150)
    p.add_argument("--report-only", action="store_true", help="rewrite the tables from docs/eval_label_search.json")
    args = p.parse_args(argv)
    if args.report_only:
        write(json.loads((REPO / "docs" / "eval_label_search.json").read_text()))
        return 0

    model, meta = checkpoint.load(checkpoint.WEIGHTS_DIR / "matching.pt")
    library = prepare_library(args.data_dir, args.library, progress=False)
    views = ViewIndex(args.data_dir / "index", library, ViewIndexConfig())
    views.sync()
    threshold = meta.get("no_match_threshold_deg")
    engine = SearchEngine(library, FeatureIndex(views, model, checkpoint.file_hash(checkpoint.WEIGHTS_DIR / "matching.pt")),
                          model, no_match_threshold_deg=threshold)
    tmodel, tmeta = checkpoint.load(checkpoint.WEIGHTS_DIR / "tagger.pt")
    tag = Tagger(tmodel, tmeta["none_threshold"])
    bundles = BundlePredictor.load(checkpoint.WEIGHTS_DIR / "hierarchy.pt")
    lib_cats = sorted({s.category for s in library.shapes()})
    by_name = {(s.category, s.name): s.id for s in library.shapes()}

    # 1. no match ------------------------------------------------------------------------------
    others = prepare_library(args.label_data_dir, args.library, categories=ALL_CATEGORIES, progress=False)
    # in name order, so the photos do not depend on the order the shapes were imported in (their ids)
    ood_ids = [s.id for s in sorted(others.shapes(), key=_name_key) if s.category not in lib_cats]
    in_ids = [s.id for s in sorted(library.shapes(), key=_name_key)]
    verdicts = {}
    for name, lib, ids in (("library objects", library, in_ids), ("objects not in the library", others, ood_ids)):
        rows = []
        for s in tqdm(_photos(lib, ids, args.photos, args.seed), desc=f"no-match: {name}"):
            img = Image.fromarray(s.image)
            with torch.no_grad():
                res = engine.search(img, s.box, top_k=1, refine=False)
            probs = tag.probabilities(img, s.box)
            top = max(p for lab, p in zip(tag.labels, probs) if lab in lib_cats)
            rows.append((res.no_match, top < tag.threshold))
        r = np.array(rows, bool)
        verdicts[name] = {"score": float(r[:, 0].mean()), "tagger": float(r[:, 1].mean()), "either": float(r.any(1).mean()),
                          "photos": len(r)}

    # 2. bundle-restricted search ----------------------------------------------------------------
    photos = _photos(library, in_ids, args.photos, args.seed + 1)
    modes = {MATCHER_ONLY: None, "full search": None, "category given (upper bound)": "oracle", "tagger's categories (p ≥ its threshold)": "tagger",
             **{f"DARTS bundle, tradeoff {t}": t for t in TRADEOFFS}}
    stats = {m: {"shape_ok": [], "pose_ok": [], "candidates": [], "ms": [], "in_bundle": []} for m in modes}
    total = len(library.shapes()) * len(views.config.grid)
    for s in tqdm(photos, desc="bundle search"):
        img = Image.fromarray(s.image)
        for mode, t in modes.items():
            t0 = time.perf_counter()
            ids, category = None, None
            if t == "oracle":
                category = s.category
            elif t == "tagger":     # exactly the search's tag_filter
                ids, _ = tag_filtered_ids(engine.searchable_shapes(), img, s.box, None, tag)
            elif t is not None:
                probs = class_probabilities(bundles.model, img, s.box)
                labels = bundles.bundles(probs, t, "darts")[0].labels
                ids = sorted({by_name[tuple(lab.split("/", 1))] for lab in labels if tuple(lab.split("/", 1)) in by_name})
                if not ids:
                    ids = None  # the bundle holds none of this library's shapes: fall back to the full search
            with torch.no_grad():
                if mode == MATCHER_ONLY:
                    res = engine.search(img, s.box, top_k=1, refine=False)
                else:
                    res = warm_engine.search(engine, img, s.box, category, ids, 1, True)
            ms = (time.perf_counter() - t0) * 1000
            m = res.matches[0]
            st = stats[mode]
            st["shape_ok"].append(m.shape_id == s.shape_id)
            err = np.degrees(_rot_err(np.array([[m.azimuth, m.elevation, m.theta]]), np.asarray(s.pose[:3])[None])[0])
            st["pose_ok"].append(err < 30.0)
            st["candidates"].append(res.candidates / total)
            st["ms"].append(ms)
            st["in_bundle"].append(s.shape_id in ids if ids is not None else category in (None, s.category))
    table = {m: {"shape_top1": float(np.mean(v["shape_ok"])), "pose_acc_pi6": float(np.mean(v["pose_ok"])),
                 "candidates": float(np.mean(v["candidates"])), "ms_median": float(np.median(v["ms"])),
                 "true_shape_in_bundle": float(np.mean(v["in_bundle"]))} for m, v in stats.items()}
    out = {"no_match": verdicts, "bundle_search": table, "photos": args.photos, "seed": args.seed,
           "library_categories": lib_cats, "tagger_threshold": tag.threshold, "score_threshold_deg": threshold}
    write(out)
    return 0


def write(out: dict) -> None:
    block = report(out)
    (REPO / "docs" / "eval_label_search.json").write_text(json.dumps(out, indent=1))
    (REPO / "docs" / "eval_label_search.md").write_text("# Tags and hierarchy in the search\n\n(generated by "
                                                        "`python -m models.eval_label_search`)\n\n" + block + "\n## Method\n\n"
                                                        + (__doc__ or "").split("\n\n", 2)[2] + "\n")
    replace_block("eval-label-search", block)
    print(block)


def report(out: dict) -> str:
    rows = ["| photos | no_match by score threshold | by tagger | by either (the API) |", "| --- | --- | --- | --- |"]
    for name, v in out["no_match"].items():
        rows.append(f"| {name} ({v['photos']}) | {v['score']:.3f} | {v['tagger']:.3f} | {v['either']:.3f} |")
    brows = ["| search | shape top-1 | pose Acc@π/6 | true shape in the bundle | candidates scored | median ms |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, v in out["bundle_search"].items():
        brows.append(f"| {name} | {v['shape_top1']:.3f} | {v['pose_acc_pi6']:.3f} | {v['true_shape_in_bundle']:.3f} | "
                     f"{100 * v['candidates']:.1f} % | {v['ms_median']:.0f} |")
    return (f"Search library: {', '.join(out['library_categories'])} ({out['photos']} synthetic photos per row, seed {out['seed']}; "
            f"tagger threshold {out['tagger_threshold']:.3f}; " + (
                f"score threshold {out['score_threshold_deg']:.1f}°" if out["score_threshold_deg"] is not None else
                "no score threshold is shipped: the matching score does not separate in- from out-of-library photos, "
                "docs/eval_matching.md") + ").\n\n"
            "No match (the right answer for objects not in the library):\n\n" + "\n".join(rows) +
            "\n\nSearch restricted to the hedged Vec2Bundle answer (top-1, as `/v1/search` answers by default: S1 viewpoint prior and "
            "refinement of the best grid answer, bundle or tag prediction included in the time; 2-core CPU):\n\n"
            + "\n".join(brows) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
