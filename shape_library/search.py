"""Shape and pose search: rank every (shape, pose) of the library against a photo.

A query runs the photo stream once, adds its code to the stored code of every
candidate view, and applies ReLU + FC (models.matching) in float16 chunks.  The
best grid poses can then be refined by rendering a few dozen nearby poses.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from .features import FeatureIndex, crops_to_tensor
from .grid import PoseGrid
from .library import ShapeLibrary

PHOTO_FILL = (127, 127, 127)


def photo_crop(image: Image.Image, box, size: int, margin: float):
    """The square crop of the photo the photo stream sees, and its box in photo pixels."""
    from .render import crop_square

    if box is None:
        box = (0.0, 0.0, float(image.width), float(image.height))
    return crop_square(image.convert("RGB"), box, size, margin, fill=PHOTO_FILL)


def photos_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [-0.5, 0.5]."""
    return torch.from_numpy(np.array(crops, dtype=np.uint8, copy=True)).float().div_(255.0).sub_(0.5).permute(0, 3, 1, 2).contiguous()


@dataclass
class Match:
    shape_id: int
    category: str
    name: str
    azimuth: float
    elevation: float
    theta: float
    score: float              # predicted geodesic distance, degrees
    pose_index: int | None    # grid pose, None once refined off the grid
    prior_deg: float | None = None      # the viewpoint prior's distance estimate (None: no prior)
    prior: object | None = None         # the models.viewpoint.PosePrior that gave it

    @property
    def rank_value(self) -> float:
        """What the engine orders matches by: the matcher's estimate, or with a viewpoint prior the
        weighted mean of the two distance estimates."""
        return self.score if self.prior is None else float(self.prior.combine(self.score, self.prior_deg))

    def as_dict(self) -> dict:
        """As the API reports it. `score` is the engine's estimate of the geodesic distance, the
        order of the matches; a regressed distance can dip below 0, so it is clamped at 0 and
        `raw_score` keeps the order visible when clamped scores tie. `matcher_score` is the matching
        network's own estimate (what the no-match threshold reads); `prior_deg` the viewpoint
        prior's, when one was used, and `prior_weight` its weight in the mean (scaled by S1's
        confidence), so the ranking can be recomputed from the reported numbers."""
        out = {k: getattr(self, k) for k in ("shape_id", "category", "name", "azimuth", "elevation", "theta", "pose_index", "prior_deg")}
        out["score"] = max(0.0, float(self.rank_value))
        out["raw_score"] = float(self.rank_value)
        out["matcher_score"] = float(self.score)
        out["prior_weight"] = None if self.prior is None else float(self.prior.weight)
        return out


@dataclass
class SearchResult:
    matches: list[Match]
    no_match: bool
    photo_box: tuple[float, float, float, float]
    timing_ms: dict = field(default_factory=dict)
    candidates: int = 0
    stage: str = "exhaustive"   # "ann": FAISS top-N re-ranked by the fused head (shape_library.ann)


def _setting(name: str):
    from .settings import get_settings

    return getattr(get_settings(), name)


def _ann_from_settings(features, model):
    """AnnIndex for the shipped embedding weights, or None when absent or made for other codes."""
    from .settings import get_settings

    settings = get_settings()
    path = settings.embedding_weights
    if not path.is_file():
        return None
    try:
        import faiss  # noqa: F401
    except ImportError:
        import logging

        logging.getLogger(__name__).warning("faiss is not installed: large searches stay exhaustive")
        return None
    from models import checkpoint
    from models import embedding as _embedding  # noqa: F401  (registers the model)

    from .ann import AnnIndex

    emb, meta = checkpoint.load(path, "cpu")
    if emb.config.code_dim != model.code_dim:
        return None
    teacher = meta.get("matching_hash")
    if teacher and teacher != getattr(features, "weights_key", teacher):
        import logging

        # its embeddings would rank views by another network's codes: FAISS would hand the re-ranking the wrong views
        logging.getLogger(__name__).warning(
            "%s was distilled from matching weights %s, not the loaded %s: large searches stay exhaustive "
            "until `python -m models.train_embedding` is rerun", path.name, teacher, features.weights_key)
        return None
    return AnnIndex(features, emb, checkpoint.file_hash(path), ivf_min_vectors=settings.ann_ivf_min_views, nprobe=settings.ann_nprobe)


@dataclass(frozen=True)
class Coverage:
    """Shapes of a search's scope: indexed (searchable), in the library, and not indexed yet but on their way."""

    indexed: int
    total: int
    coming: int

    @property
    def complete(self) -> bool:
        return self.indexed >= self.total

    def notice(self) -> str | None:
        """What an answer says when it is partial (None when it is not)."""
        if self.complete:
            return None
        why = (f"{self.coming} are still being indexed" if self.coming == self.total - self.indexed
               else f"{self.total - self.indexed - self.coming} failed to index (see GET /v1/shapes)"
               + (f" and {self.coming} are still being indexed" if self.coming else ""))
        return f"only {self.indexed} of the {self.total} shapes asked for are searchable ({why}): the matches come from those only"


class SearchEngine:
    def __init__(self, library: ShapeLibrary, features: FeatureIndex, model, device: str = "cpu",
                 no_match_threshold_deg: float | None = None, chunk: int = 4096, ann="auto", ann_min_views="auto",
                 ann_top_n: int | None = None, refine_top: int = 1):
        self.library = library
        self.features = features
        self.views = features.views
        self.grid: PoseGrid = self.views.config.grid
        self.model = model.eval()
        self.device = device
        self.no_match_threshold_deg = no_match_threshold_deg
        self.chunk = chunk
        self.refine_top = max(1, int(refine_top))   # grid answers refinement moves (why 1: Settings.search_refine_top)
        self._matrix_key: tuple | None = None
        self._matrix: torch.Tensor | None = None
        self._owner: np.ndarray | None = None
        self._renderer = None
        # FAISS first stage: "auto" builds it from the settings on the first search large enough to need it.
        self._ann = ann
        self._ann_synced: tuple | None = None
        self.ann_min_views = _setting("ann_min_views") if ann_min_views == "auto" else ann_min_views
        self.ann_top_n = ann_top_n or _setting("ann_top_n")

    # Candidates ---------------------------------------------------------------
    def searchable_shapes(self) -> list:
        """The library's shapes whose views are indexed (what a search can return)."""
        return self._select(None, None)

    def coverage(self, category: str | None = None, shape_ids: list[int] | None = None) -> "Coverage":
        """How much of the asked scope a search can see now: a search while the view index builds ranks
        only the indexed shapes, so its answer must say it is partial (and a batch item may wait)."""
        from .catalog import IndexStatus

        scope = self._scope(category, shape_ids)
        missing = [s for s in scope if not self.views.has(s.id)]
        coming = sum(1 for s in missing if s.index_status in (IndexStatus.pending.value, IndexStatus.indexing.value))
        return Coverage(len(scope) - len(missing), len(scope), coming)

    def _scope(self, category: str | None, shape_ids: list[int] | None) -> list:
        """The library's shapes a search asked for (category, ids), indexed or not."""
        wanted = None if shape_ids is None else set(shape_ids)
        return [s for s in self.library.shapes() if (not category or s.category == category)
                and (wanted is None or s.id in wanted)]

    def _select(self, category: str | None, shape_ids: list[int] | None) -> list:
        return [s for s in self._scope(category, shape_ids) if self.views.has(s.id)]

    def _codes(self, shape_ids: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
        """All candidate codes as one (N, D) float16 matrix, cached per shape set."""
        if self._matrix_key != shape_ids:
            mats = [self.features.codes(sid) for sid in shape_ids]
            self._matrix = torch.cat(mats).to(self.device) if mats else torch.zeros(0, self.model.code_dim, dtype=torch.float16)
            self._owner = np.repeat(np.array(shape_ids, dtype=np.int64), [len(m) for m in mats]) if mats else np.zeros(0, np.int64)
            self._matrix_key = shape_ids
        return self._matrix, self._owner

    @torch.no_grad()
    def score_all(self, photo_code: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Predicted distances (radians) of one photo code against (N, D) view codes."""
        head = self.model.head
        dtype = codes.dtype
        if not len(codes):
            return torch.zeros(0)
        pc = photo_code.reshape(-1).to(dtype)
        w = head.fc.weight.reshape(-1).to(dtype)
        # One chunk-sized scratch buffer, written in place: a fresh tensor per chunk made the allocator
        # map and fault in ~0.8 GB of pages per query over 200k candidates (most of the query's time).
        buf = torch.empty(min(self.chunk, len(codes)), codes.shape[1], dtype=dtype, device=codes.device)
        out = torch.empty(len(codes), dtype=dtype, device=codes.device)
        for i in range(0, len(codes), self.chunk):
            part = codes[i : i + self.chunk]
            b = buf[: len(part)]
            torch.add(part, pc, out=b).relu_()
            torch.mv(b, w, out=out[i : i + len(part)])
        return out.float() + head.fc.bias.float()

    # FAISS first stage ---------------------------------------------------------------
    def ann_index(self):
        """The FAISS index over the library's views (None when the embedding weights are absent)."""
        if self._ann == "auto":
            self._ann = _ann_from_settings(self.features, self.model)
        return self._ann

    def _ann_ready(self):
        ann = self.ann_index()
        if ann is None:
            return None
        ids = tuple(s.id for s in self.library.shapes() if self.views.has(s.id))
        if self._ann_synced != ids:
            ann.sync(ids)
            self._ann_synced = ids
        return ann

    def gather_codes(self, sids: np.ndarray, poses: np.ndarray) -> torch.Tensor:
        """The stored codes of the given (shape, pose) views, in order."""
        out = torch.empty(len(sids), self.model.code_dim, dtype=torch.float16)
        order = np.argsort(sids, kind="stable")
        uniq, starts = np.unique(sids[order], return_index=True)
        for sid, rows in zip(uniq, np.split(order, starts[1:])):
            out[torch.from_numpy(rows)] = self.features.codes(int(sid))[torch.from_numpy(poses[rows])].cpu()
        return out.to(self.device)

    def _ann_rank(self, ann, code, shapes, pose_subset):
        from .ann import first_stage

        sids, poses = first_stage(ann, code, self.ann_top_n, [s.id for s in shapes], pose_subset)
        scores = self.score_all(code, self.gather_codes(sids, poses)) if len(sids) else torch.zeros(0)
        return scores, sids, poses

    @torch.no_grad()
    def photo_code(self, image: Image.Image, box=None):
        cfg = self.views.config
        crop, sq = photo_crop(image, box, self.model.config.input_size, cfg.margin)
        x = photos_to_tensor(np.asarray(crop)[None]).to(self.device)
        return self.model.photo_codes(x)[0], sq

    # Search -------------------------------------------------------------------
    def search(self, image: Image.Image, box=None, category: str | None = None, shape_ids: list[int] | None = None,
               top_k: int = 5, refine: bool = True, pose_subset: np.ndarray | None = None, prior=None) -> SearchResult:
        """`pose_subset`: score only these grid poses (a hard cut, for speed); `prior`: a soft
        viewpoint prior (models.viewpoint.PosePrior) combined with every candidate's score for
        ranking, on and off the grid. The no-match verdict reads the matcher's own score, the one its
        threshold was calibrated on."""
        t0 = time.perf_counter()
        shapes = self._select(category, shape_ids)
        by_id = {s.id: s for s in shapes}
        code, sq = self.photo_code(image, box)
        t1 = time.perf_counter()
        V = len(self.grid)
        n_cand = len(shapes) * (len(pose_subset) if pose_subset is not None else V)
        ann = self._ann_ready() if self.ann_min_views is not None and n_cand >= self.ann_min_views else None
        stage, ann_sids = "exhaustive", None
        if ann is not None:
            stage = "ann"
            scores, ann_sids, ann_poses = self._ann_rank(ann, code, shapes, pose_subset)
        else:
            codes, owner = self._codes(tuple(s.id for s in shapes))
            if pose_subset is not None and len(codes):
                rows = (np.arange(len(shapes))[:, None] * V + np.asarray(pose_subset)[None, :]).reshape(-1)
                scores = self.score_all(code, codes[torch.from_numpy(rows)])
                flat = rows
            else:
                scores = self.score_all(code, codes)
                flat = None
        prior_d = None
        if prior is not None and len(scores):
            grid_d = prior.distance(self.grid.poses()).float()          # degrees, one per grid pose
            if ann_sids is not None:
                pose_of = torch.from_numpy(np.asarray(ann_poses, dtype=np.int64))
            elif flat is not None:
                pose_of = torch.from_numpy(np.asarray(flat, dtype=np.int64) % V)
            else:
                pose_of = torch.arange(len(scores)) % V
            prior_d = grid_d[pose_of]
        t2 = time.perf_counter()
        k = min(top_k if not refine else max(top_k, self.refine_top), len(scores))
        ranked = scores if prior_d is None else prior.combine(scores, torch.deg2rad(prior_d.to(scores.device)))
        best = torch.topk(ranked, k, largest=False) if k else None
        matches = []
        if best is not None:
            for i in best.indices.tolist():
                if ann_sids is not None:
                    sid, pose = int(ann_sids[i]), int(ann_poses[i])
                else:
                    row = int(flat[i]) if flat is not None else int(i)
                    sid, pose = int(owner[row]), row % V
                a, e, t = self.grid.poses(pose)
                sh = by_id[sid]
                matches.append(Match(sid, sh.category, sh.name, float(a), float(e), float(t), float(np.degrees(float(scores[i]))),
                                     int(pose), None if prior_d is None else float(prior_d[i]), None if prior_d is None else prior))
        t3 = time.perf_counter()
        if refine and matches:
            n_ref = min(self.refine_top, len(matches))
            matches = self.refine(code, matches[:n_ref], prior) + matches[n_ref:]
            matches.sort(key=lambda m: m.rank_value)
        t4 = time.perf_counter()
        no_match = bool(not matches or (self.no_match_threshold_deg is not None and matches[0].score > self.no_match_threshold_deg))
        timing = {"photo_stream": (t1 - t0) * 1e3, "ranking": (t2 - t1) * 1e3, "refinement": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3}
        if stage == "ann":
            timing["ann_first_stage"] = timing["ranking"]   # FAISS top-N + exact re-ranking (the key says which stage ran)
        return SearchResult(matches[:top_k], no_match, sq, {k: round(v, 2) for k, v in timing.items()},
                            n_cand if stage == "ann" else len(scores), stage)

    # Refinement ---------------------------------------------------------------
    def _render_crops(self, shape_id: int, poses: np.ndarray) -> np.ndarray:
        from .index import render_crops
        from .render import Renderer

        if self._renderer is None:
            self._renderer = Renderer(self.views.config.canvas)
        return render_crops(self._renderer, self.library.mesh(shape_id), poses, self.views.config)[0]

    def refinement_poses(self, a: float, e: float, t: float, steps: int = 3) -> np.ndarray:
        """Poses around a grid pose at a third of a bin spacing along each angle."""
        da, de, dt = 360.0 / self.grid.n_azimuth, 180.0 / self.grid.n_elevation, 360.0 / self.grid.n_theta
        offs = (np.arange(steps) - (steps - 1) / 2) * (2.0 / (3 * (steps - 1)) if steps > 1 else 0)
        A, E, T = np.meshgrid(a + offs * da, np.clip(e + offs * de, -89.9, 89.9), t + offs * dt, indexing="ij")
        poses = np.stack([np.mod(A, 360), E, (T + 180) % 360 - 180], -1).reshape(-1, 3)
        return poses

    @torch.no_grad()
    def refine(self, photo_code: torch.Tensor, matches: list[Match], prior=None) -> list[Match]:
        """Each match moved to the best of the poses around it, judged as the ranking was (with the
        prior's penalty when there is one); kept where none beats it."""
        out = []
        for m in matches:
            poses = self.refinement_poses(m.azimuth, m.elevation, m.theta)
            codes = self.model.render_codes(crops_to_tensor(self._render_crops(m.shape_id, poses)).to(self.device))
            scores = torch.rad2deg(self.score_all(photo_code, codes.float()).double()).cpu()
            if prior is None:
                dist, ranked = None, scores
            else:
                dist = prior.distance(poses)
                ranked = prior.combine(scores, dist)
            i = int(torch.argmin(ranked))
            if float(ranked[i]) < m.rank_value:
                a, e, t = poses[i]
                out.append(Match(m.shape_id, m.category, m.name, float(a), float(e), float(t), float(scores[i]), None,
                                 None if dist is None else float(dist[i]), prior))
            else:
                out.append(m)
        return out

    # Overlay ------------------------------------------------------------------
    def overlay(self, image: Image.Image, result: SearchResult, rank: int = 0, alpha: float = 0.55) -> bytes:
        """PNG: the match rendered in its pose, blended onto the photo inside the searched box."""
        from .render import Renderer, crop_square, mask_box

        photo = image.convert("RGB")
        if not result.matches:
            buf = io.BytesIO()
            photo.save(buf, "PNG")
            return buf.getvalue()
        m = result.matches[rank]
        cfg = self.views.config
        x0, y0, x1, y1 = result.photo_box
        side = max(1, int(round(x1 - x0)))
        if self._renderer is None:
            self._renderer = Renderer(cfg.canvas)
        res = self._renderer.render(self.library.mesh(m.shape_id), m.azimuth, m.elevation, m.theta, cfg.distance)
        box = mask_box(res.mask)
        tint = np.dstack([res.shading * 90 + 40, res.shading * 200 + 55, res.shading * 255])
        rgba = np.dstack([tint.astype(np.uint8), (res.mask * 255).astype(np.uint8)])
        layer, _ = crop_square(rgba, box, side, cfg.margin, fill=(0, 0, 0, 0))
        a = np.asarray(layer).astype(np.float32)
        a[..., 3] *= alpha
        canvas = Image.new("RGBA", photo.size, (0, 0, 0, 0))
        canvas.paste(Image.fromarray(a.astype(np.uint8), "RGBA"), (int(round(x0)), int(round(y0))))
        out = Image.alpha_composite(photo.convert("RGBA"), canvas)
        edge = Image.fromarray((np.asarray(layer)[..., 3] > 0).astype(np.uint8) * 255)
        from PIL import ImageFilter

        outline = np.asarray(edge.filter(ImageFilter.FIND_EDGES)) > 0
        ol = Image.new("RGBA", photo.size, (0, 0, 0, 0))
        ol.paste(Image.fromarray(np.dstack([np.full(outline.shape + (3,), (255, 200, 0), np.uint8), outline.astype(np.uint8) * 255]), "RGBA"), (int(round(x0)), int(round(y0))))
        out = Image.alpha_composite(out, ol)
        ImageDraw.Draw(out).rectangle([x0, y0, x1, y1], outline=(255, 255, 255, 180))
        buf = io.BytesIO()
        out.convert("RGB").save(buf, "PNG")
        return buf.getvalue()
