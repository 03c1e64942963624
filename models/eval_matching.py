"""Evaluate shape search on held-out synthetic photos (the chapter's experiments 1-5).

    python -m models.eval_matching --library ../shared/shape_library --weights models/weights/matching.pt

Writes docs/eval_matching.md (+ a noisy-box plot) and the tables into the README
between the `<!-- eval-matching -->` markers.
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

from shape_library.features import FeatureIndex, crops_to_tensor
from shape_library.grid import PoseGrid
from shape_library.index import ViewIndex, ViewIndexConfig
from shape_library.search import SearchEngine, photo_crop, photos_to_tensor

from .reports import replace_block
from . import checkpoint, geometry
from . import matching  # noqa: F401
from .pairs import pose_rotations
from .train_matching import CATEGORIES, checkpoint_split, prepare_library

PI6 = np.pi / 6
MIN_NO_MATCH_BALANCED_ACCURACY = 0.75


def _rot_err(poses_a: np.ndarray, poses_b: np.ndarray) -> np.ndarray:
    return geometry.geodesic_distance(pose_rotations(poses_a).double(), pose_rotations(poses_b).double()).numpy()


def _summ(errs, hits5, hits5x=None, shape_top1=None, shape_top5=None) -> dict:
    errs = np.asarray(errs)
    out = {"n": len(errs), "p@5": float(np.mean(hits5)), "acc_pi6": float(np.mean(errs < PI6)), "median_deg": float(np.degrees(np.median(errs)))}
    if hits5x is not None:
        out["p@5_exact"] = float(np.mean(hits5x))
    if shape_top1 is not None:
        out["shape_top1"] = float(np.mean(shape_top1))
        out["shape_top5"] = float(np.mean(shape_top5))
    return out


class Evaluator:
    def __init__(self, engine: SearchEngine, library, photos, baseline=None):
        self.engine = engine
        self.library = library
        self.photos = photos   # list of synthetic samples
        self.grid: PoseGrid = engine.grid
        self.cats = {s.id: s.category for s in library.shapes()}
        self.baseline = baseline

    def _codes(self, sample, box=None):
        return self.engine.photo_code(Image.fromarray(sample.image), box if box is not None else sample.box)

    @torch.no_grad()
    def shape_known(self, refine: bool, box_noise: float = 0.0, scale_noise: float = 0.0, seed: int = 0, exact: bool = True) -> dict:
        rng = np.random.default_rng(seed)
        errs, hits, hits_x = [], [], []
        for s in tqdm(self.photos, desc=f"shape known (refine={refine}, noise={box_noise})", leave=False):
            box = np.asarray(s.box, float)
            if box_noise or scale_noise:
                w, h = box[2] - box[0], box[3] - box[1]
                c = np.array([(box[0] + box[2]) / 2 + rng.uniform(-1, 1) * box_noise * w, (box[1] + box[3]) / 2 + rng.uniform(-1, 1) * box_noise * h])
                k = rng.uniform(1 - scale_noise, 1 + scale_noise) if scale_noise else 1.0
                box = np.array([c[0] - k * w / 2, c[1] - k * h / 2, c[0] + k * w / 2, c[1] + k * h / 2])
            code, _ = self._codes(s, box)
            scores = self.engine.score_all(code, self.engine.features.codes(s.shape_id))
            order = torch.argsort(scores).numpy()
            true_bin = int(self.grid.nearest_index(*s.pose[:3]))
            hits.append(true_bin in order[:5])
            if exact:
                crop = self.engine._render_crops(s.shape_id, np.array([s.pose[:3]]))
                xs = self.engine.score_all(code, self.engine.model.render_codes(crops_to_tensor(crop)).half())
                rank_exact = int((scores < xs[0]).sum())
                hits_x.append(rank_exact < 5 or true_bin in order[:5])
            best = self.grid.poses(order[0])
            if refine:
                from shape_library.search import Match

                m = Match(s.shape_id, "", "", *[float(x) for x in best], float(np.degrees(scores[order[0]])), int(order[0]))
                r = self.engine.refine(code, [m])[0]
                best = np.array([r.azimuth, r.elevation, r.theta])
            errs.append(_rot_err(best[None], np.asarray(s.pose[:3])[None])[0])
        return _summ(errs, hits, hits_x if exact else None)

    @torch.no_grad()
    def category_known(self) -> dict:
        errs, hits, st1, st5 = [], [], [], []
        for s in tqdm(self.photos, desc="category known", leave=False):
            cat = self.cats[s.shape_id]
            ids = [x.id for x in self.library.shapes(cat) if self.engine.views.has(x.id)]
            code, _ = self._codes(s)
            codes, owner = self.engine._codes(tuple(ids))
            scores = self.engine.score_all(code, codes).numpy()
            order = np.argsort(scores)
            V = len(self.grid)
            true_bin = int(self.grid.nearest_index(*s.pose[:3]))
            top5 = [(int(owner[i]), int(i % V)) for i in order[:5]]
            hits.append((s.shape_id, true_bin) in top5)
            best_per_shape = {}
            for i in order:
                sid = int(owner[i])
                if sid not in best_per_shape:
                    best_per_shape[sid] = i
                if len(best_per_shape) == len(ids):
                    break
            ranking = list(best_per_shape)
            st1.append(ranking[0] == s.shape_id)
            st5.append(s.shape_id in ranking[:5])
            errs.append(_rot_err(self.grid.poses(order[0] % V)[None], np.asarray(s.pose[:3])[None])[0])
        return _summ(errs, hits, None, st1, st5)

    @torch.no_grad()
    def baseline_cosine(self, stream) -> dict:
        """Cosine nearest neighbour between generic CNN features of photo and rendering crops."""
        errs, hits = [], []
        S = self.engine.model.config.input_size
        feats_cache = {}
        for s in tqdm(self.photos, desc="baseline", leave=False):
            if s.shape_id not in feats_cache:
                crops = self.engine.views.load(s.shape_id).crops
                x = crops_to_tensor(crops).repeat(1, 3, 1, 1)
                f = torch.cat([stream(x[i : i + 512]).flatten(1) for i in range(0, len(x), 512)])
                feats_cache[s.shape_id] = torch.nn.functional.normalize(f, dim=1)
            crop, _ = photo_crop(Image.fromarray(s.image), s.box, S, self.engine.views.config.margin)
            g = torch.nn.functional.normalize(stream(photos_to_tensor(np.asarray(crop)[None])).flatten(1), dim=1)
            order = torch.argsort(feats_cache[s.shape_id] @ g[0], descending=True).numpy()
            hits.append(int(self.grid.nearest_index(*s.pose[:3])) in order[:5])
            errs.append(_rot_err(self.grid.poses(order[0])[None], np.asarray(s.pose[:3])[None])[0])
        return _summ(errs, hits)


def per_category(photos, cats, fn) -> dict:
    out = {}
    for c in CATEGORIES:
        sub = [p for p in photos if cats[p.shape_id] == c]
        if sub:
            out[c] = fn(sub)
    out["all"] = fn(photos)
    return out


def fmt_table(rows: dict, cols: list[str], title: str) -> str:
    head = "| " + title + " | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1) + "\n"
    body = ""
    for name, r in rows.items():
        body += f"| {name} | " + " | ".join(("%.3f" % r[c] if c != "median_deg" else "%.1f°" % r[c]) if c in r and c != "n" else str(r.get(c, "")) for c in cols) + " |\n"
    return head + body


def main(argv=None) -> int:
    from shape_library.synthetic import SyntheticConfig, generate

    p = argparse.ArgumentParser(prog="python -m models.eval_matching", description=__doc__)
    p.add_argument("--library", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("var/train"))
    p.add_argument("--weights", type=Path, default=checkpoint.WEIGHTS_DIR / "matching.pt")
    p.add_argument("--photos", type=int, default=240, help="photos per experiment")
    p.add_argument("--seed", type=int, default=1000, help="seed of the evaluation photos (training used another)")
    p.add_argument("--out", type=Path, default=Path("docs/eval_matching.md"))
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    args = p.parse_args(argv)

    model, meta = checkpoint.load(args.weights)
    library = prepare_library(args.data_dir, args.library, progress=False)
    grid = PoseGrid(*(int(x) for x in meta.get("grid", "grid-21x11x11").split("-")[1].split("x")))
    views = ViewIndex(args.data_dir / "index", library, ViewIndexConfig(grid=grid))
    views.sync()
    features = FeatureIndex(views, model, checkpoint.file_hash(args.weights))
    engine = SearchEngine(library, features, model)
    train_ids, heldout_ids = checkpoint_split(meta, library)
    cats = {s.id: s.category for s in library.shapes()}

    def photos(ids, seed, n):
        return list(generate(library, ids, n, seed, SyntheticConfig()))

    t0 = time.time()
    seen = photos(train_ids, args.seed, args.photos)
    unseen = photos(heldout_ids, args.seed + 1, args.photos)
    results: dict = {"weights": str(args.weights), "photos_per_set": args.photos, "seed": args.seed}

    def ev(ph):
        return Evaluator(engine, library, ph)

    results["exp1_shape_known"] = per_category(seen, cats, lambda ph: ev(ph).shape_known(refine=False))
    results["exp1_refined"] = per_category(seen, cats, lambda ph: ev(ph).shape_known(refine=True, exact=False))
    results["exp2_category_known"] = per_category(seen, cats, lambda ph: ev(ph).category_known())
    results["exp3_unseen_shape_known"] = per_category(unseen, cats, lambda ph: ev(ph).shape_known(refine=False))
    results["exp3_unseen_category_known"] = per_category(unseen, cats, lambda ph: ev(ph).category_known())
    noise = {}
    for shift in (0.0, 0.05, 0.10, 0.20):
        noise[f"shift {int(shift * 100)}%, scale ±20%" if shift else "exact box"] = ev(seen).shape_known(
            refine=False, box_noise=shift, scale_noise=0.2 if shift else 0.0, exact=False)
    results["exp4_noisy_box"] = noise
    torch.manual_seed(0)
    untrained = matching.MatchingNet(model.config).photo_stream.eval()
    results["exp5_baseline_untrained_cnn_cosine"] = per_category(seen, cats, lambda ph: ev(ph).baseline_cosine(untrained))
    results["eval_seconds"] = round(time.time() - t0, 1)

    # no-match threshold: best score on in-library photos vs photos of categories the library lacks
    results["no_match"] = calibrate_no_match(engine, library, args, seen)

    write_reports(results, args)
    return 0


def calibrate_no_match(engine, library, args, seen) -> dict:
    from shape_library.importers import import_folder
    from shape_library.library import ShapeLibrary
    from shape_library.synthetic import SyntheticConfig, generate

    if args.library is None:
        return {}
    ood_lib = ShapeLibrary(args.data_dir / "ood")
    import_folder(ood_lib, args.library, categories={"chair", "sofa", "table", "animal", "bottle", "teapot", "cup"}, progress=False)
    ood = list(generate(ood_lib, [s.id for s in ood_lib.shapes()], args.photos, args.seed + 7, SyntheticConfig()))
    ids = [s.id for s in library.shapes() if s.category in CATEGORIES]

    def best(samples):
        out = []
        for s in samples:
            code, _ = engine.photo_code(Image.fromarray(s.image), s.box)
            codes, _ = engine._codes(tuple(ids))
            out.append(float(np.degrees(engine.score_all(code, codes).min())))
        return np.array(out)

    b_in, b_out = best(seen), best(ood)
    ths = np.unique(np.concatenate([b_in, b_out]))
    bal = [(np.mean(b_in <= t) + np.mean(b_out > t)) / 2 for t in ths]
    i = int(np.argmax(bal))
    return {"threshold_deg": float(ths[i]), "balanced_accuracy": float(bal[i]), "in_library_kept": float(np.mean(b_in <= ths[i])),
            "out_of_library_rejected": float(np.mean(b_out > ths[i])), "median_best_in": float(np.median(b_in)), "median_best_out": float(np.median(b_out))}


def write_model_card(weights: Path, eval_md: str, no_match: dict) -> None:
    """models/weights/<name>.md beside the weights: recipe, seed, time, hardware, measured metrics."""
    card = weights.with_suffix(".json")
    meta = json.loads(card.read_text()) if card.is_file() else {}
    # A threshold that barely separates in-library from out-of-library photos would only
    # turn good answers into "no match": the service gets one only when it is useful.
    useful = no_match.get("balanced_accuracy", 0) >= MIN_NO_MATCH_BALANCED_ACCURACY
    meta["no_match_threshold_deg"] = no_match["threshold_deg"] if useful else None
    meta["no_match_calibration"] = no_match
    card.write_text(json.dumps(meta, indent=1))
    names = meta.get("shape_names", {})
    held = ", ".join(names.get(str(i), str(i)) for i in meta.get("heldout_shapes", []))
    text = f"""# Model card: {weights.name}

Geometric differential matching network (`{meta.get('model', 'matching-cpu')}`: two AlexNet-topology streams, 64 px input,
1x1-conv fusion + FC), regressing the geodesic distance (radians) between a photo's and a rendering's rotation.

- **Command**: `python -m models.train_matching --library ../shared/shape_library --data-dir var/train --photos {meta.get('photos')} --steps {meta.get('steps')} --batch {meta.get('batch')} --seed {meta.get('seed')} --aux-weight {meta.get('aux_weight', 0)}`
- **Data recipe**: the generated default library plus the real aeroplane/boat/car meshes of `../shared/shape_library`;
  20 % of each category's shapes held out ({len(meta.get('heldout_shapes', []))} shapes: {held}).
  {meta.get('photos')} synthetic photos (`shape_library.synthetic`, seed {meta.get('seed')}) of the {len(meta.get('train_shapes', []))} training shapes;
  per photo {meta.get('pairs_per_photo')} grid renderings: {meta.get('pair_sampling')}.
- **Views** (the rendering stream's input): view index `{meta.get('view_index')}`, renderer `{meta.get('renderer', 'flat-normals-v1')}`.
- **Seed** {meta.get('seed')}; **training time** {meta.get('training_seconds', 0) / 60:.1f} min on {meta.get('hardware')}; final training MSE {meta.get('final_loss', float('nan')):.4f} rad².
- **No-match threshold** (calibrated by `models.eval_matching`, used only when its balanced accuracy reaches {MIN_NO_MATCH_BALANCED_ACCURACY}): {meta.get('no_match_threshold_deg')}° (calibration: {json.dumps(meta.get('no_match_calibration', {}))}).
- Weights stored as float16 ({weights.stat().st_size / 2**20:.1f} MB).

{eval_md}"""
    weights.with_suffix(".md").write_text(text)


def write_reports(results: dict, args) -> None:
    cols = ["n", "p@5", "p@5_exact", "acc_pi6", "median_deg"]
    cols2 = ["n", "p@5", "acc_pi6", "median_deg", "shape_top1", "shape_top5"]
    md = "## Shape search evaluation (held-out synthetic photos)\n\n"
    md += f"Weights `{checkpoint.repo_path(results['weights'])}`, {results['photos_per_set']} photos per set, photo seed {results['seed']}; produced by `python -m models.eval_matching`.\n\n"
    md += "**1. Shape known** (photos of training shapes at new poses, new appearance):\n\n" + fmt_table(results["exp1_shape_known"], cols, "category") + "\n"
    md += "With refinement (27 rendered poses around the best grid pose):\n\n" + fmt_table(results["exp1_refined"], ["n", "acc_pi6", "median_deg"], "category") + "\n"
    md += "**2. Only the category known** (all its shapes × 2,541 poses):\n\n" + fmt_table(results["exp2_category_known"], cols2, "category") + "\n"
    md += "**3. Shapes never seen in training**, shape known:\n\n" + fmt_table(results["exp3_unseen_shape_known"], cols, "category") + "\n"
    md += "and category known:\n\n" + fmt_table(results["exp3_unseen_category_known"], cols2, "category") + "\n"
    md += "**4. Noisy box** (shape known, seen shapes):\n\n" + fmt_table(results["exp4_noisy_box"], ["n", "p@5", "acc_pi6", "median_deg"], "box") + "\n"
    md += "**5. Baseline**: cosine nearest neighbour of untrained CNN features (same stream architecture, random weights):\n\n" + fmt_table(results["exp5_baseline_untrained_cnn_cosine"], ["n", "p@5", "acc_pi6", "median_deg"], "category") + "\n"
    if results.get("no_match"):
        nm = results["no_match"]
        md += (f"**No match**: threshold {nm['threshold_deg']:.1f}° on the best score keeps {nm['in_library_kept']:.1%} of in-library photos "
               f"and rejects {nm['out_of_library_rejected']:.1%} of photos of categories the library lacks (balanced accuracy {nm['balanced_accuracy']:.3f}).\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    write_model_card(Path(results["weights"]), md, results.get("no_match", {}))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    replace_block("eval-matching", md, args.readme)
    print(md)


if __name__ == "__main__":
    raise SystemExit(main())
