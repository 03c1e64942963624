"""This process's search engine: weights loaded once, codes kept warm, one user at a time.

The API and the in-process or Celery workers share it; `lock` serialises searches because one
engine holds one renderer and one candidate matrix.
"""
from __future__ import annotations

import json
import threading
from functools import lru_cache

from .bootstrap import feature_index_from_settings, library_from_settings, view_index_from_settings
from .settings import get_settings

lock = threading.RLock()
_build_lock = threading.Lock()


@lru_cache(maxsize=1)
def _engine():
    from .search import SearchEngine

    settings = get_settings()
    library = library_from_settings(settings)
    parts = feature_index_from_settings(settings, view_index_from_settings(settings, library))
    if parts is None:
        return None
    model, features = parts
    card = settings.matching_weights.with_suffix(".json")
    threshold = json.loads(card.read_text()).get("no_match_threshold_deg") if card.is_file() else None
    return SearchEngine(library, features, model, features.device, no_match_threshold_deg=threshold,
                        refine_top=settings.search_refine_top)


def get_engine():
    """The engine, or None when the matching weights are absent."""
    with _build_lock:
        return _engine()


def reset_engine() -> None:
    with _build_lock:
        _engine.cache_clear()


@lru_cache(maxsize=8)
def _checkpoint(field: str):
    """(model, meta) of the shipped weights named by a settings field, or None when the file is absent."""
    from models import checkpoint

    settings = get_settings()
    path = getattr(settings, field)
    if not path.is_file():
        return None
    return checkpoint.load(path, settings.torch_device())


def reset_models() -> None:
    """Forget every loaded model, so the next request reads the weights the settings name now."""
    _checkpoint.cache_clear()
    _labelled.cache_clear()


def _weights(field: str):
    loaded = _checkpoint(field)
    return None if loaded is None else loaded[0]


def get_viewpoint_model():
    """The S1 viewpoint model, or None when its weights are absent."""
    with _build_lock:
        return _weights("viewpoint_weights")


def get_rotation_model():
    """The S3 rotation model, or None when its weights are absent."""
    with _build_lock:
        return _weights("rotation_weights")


def get_normals_model():
    """The S2 surface-normal model, or None when its weights are absent."""
    with _build_lock:
        return _weights("normals_weights")


class Tagger:
    """The shipped quasibinary tagger with its calibrated "none" threshold."""

    def __init__(self, model, threshold: float):
        self.model, self.threshold = model, float(threshold)
        self.labels = tuple(model.labels)

    def probabilities(self, image, box=None):
        return class_probabilities(self.model, image, box)


def class_probabilities(model, image, box=None):
    """Per-class probabilities of a tagger-type model for a PIL photo (the box's square crop, or
    the whole photo padded to a square, as the training scenes were)."""
    import numpy as np

    from .search import photo_crop, photos_to_tensor

    crop, _ = photo_crop(image, box, model.config.input_size, 0.1 if box is not None else 0.0)
    x = photos_to_tensor(np.asarray(crop)[None]).to(next(model.parameters()).device)
    return model.probabilities(x)[0]


@lru_cache(maxsize=2)
def _labelled(field: str):
    from models.bundle_predictor import BundlePredictor

    loaded = _checkpoint(field)
    if loaded is None:
        return None
    model, meta = loaded
    return BundlePredictor(model, meta) if field == "hierarchy_weights" else Tagger(model, meta.get("none_threshold", 0.5))


def get_tagger() -> Tagger | None:
    """The quasibinary tagger, or None when its weights are absent."""
    with _build_lock:
        return _labelled("tagger_weights")


def get_bundle_predictor():
    """The Vec2Bundle model and tree, or None when its weights are absent."""
    with _build_lock:
        return _labelled("hierarchy_weights")


def tagged_categories(shapes, image, box, tagger: Tagger | None = None) -> list[str] | None:
    """The categories of `shapes` (the searchable ones) worth searching by the tagger: those it finds (probability at or above
    its threshold) plus those outside its vocabulary, which it cannot rule out.  None when the tagger is
    absent or finds none of these categories (then the search covers everything and the
    no-match verdict speaks)."""
    tagger = tagger or get_tagger()
    if tagger is None:
        return None
    probs = dict(zip(tagger.labels, (float(p) for p in tagger.probabilities(image, box))))
    found = [c for c, p in probs.items() if p >= tagger.threshold]
    if not found:
        return None
    cats = sorted({s.category for s in shapes})
    return [c for c in cats if c in found or c not in probs] or None   # none of them here: the veto speaks


def tag_filtered_ids(shapes, image, box, shape_ids: list[int] | None,
                     tagger: Tagger | None = None) -> tuple[list[int] | None, list[str] | None]:
    """(shape ids to search, categories searched) under the tagger's category filter over `shapes`,
    the searchable (indexed) ones; the ids are unchanged when the tagger does not narrow the search."""
    cats = tagged_categories(shapes, image, box, tagger)
    if cats is None:
        return shape_ids, None
    keep = {s.id for s in shapes if s.category in cats}
    ids = sorted(keep if shape_ids is None else keep.intersection(shape_ids))
    return (ids, cats) if ids else (shape_ids, None)   # the given shapes are all ruled out: the veto speaks


def tagger_verdict(library, image, box, category: str | None, shape_ids: list[int] | None) -> tuple[bool, float | None]:
    """(none, the largest probability among the searched categories): whether the tagger says no
    searched category is in the photo.  Only where its vocabulary covers every category searched (it
    cannot vouch for one it never learned) and the settings ask for it; (False, None) otherwise."""
    if not get_settings().search_uses_tagger:
        return False, None
    tagger = get_tagger()
    if category:
        cats = {category}
    else:
        wanted = None if shape_ids is None else set(shape_ids)
        cats = {s.category for s in library.shapes() if wanted is None or s.id in wanted}
    if tagger is None or not cats or not cats <= set(tagger.labels):
        return False, None
    probs = tagger.probabilities(image, box)
    top = float(max(p for lab, p in zip(tagger.labels, probs) if lab in cats))
    return top < tagger.threshold, round(top, 4)


@lru_cache(maxsize=4)
def _grid_rotations(n_a: int, n_e: int, n_t: int):
    from models.pairs import grid_rotations

    from .grid import PoseGrid

    return grid_rotations(PoseGrid(n_a, n_e, n_t)).double()


def prior_covers(engine, category: str | None, shape_ids: list[int] | None) -> bool:
    """Whether the viewpoint model has a head for every category the search covers (its generic
    head is no prior worth trusting)."""
    model = get_viewpoint_model()
    if model is None:
        return False
    known = set(model.names[:-1])
    if category:
        return category in known
    shapes = engine.library.shapes()
    if shape_ids is not None:
        wanted = set(shape_ids)
        shapes = [s for s in shapes if s.id in wanted]
    return bool(shapes) and all(s.category in known for s in shapes)


def photo_viewpoint(model, image, box, category: str | None, margin: float):
    """(angles in degrees as a (3,) float64 CPU tensor, confidence, square crop box) of the S1 model for
    one PIL photo, seen through the same square crop as the search's photo stream. A category without
    a head of its own gets the generic head."""
    import numpy as np

    from .search import photo_crop, photos_to_tensor

    crop, sq = photo_crop(image, box, model.config.input_size, margin)
    x = photos_to_tensor(np.asarray(crop)[None]).to(next(model.parameters()).device)
    angles, conf = model.predict(x, [category if category in model.names else None])   # predict runs without autograd
    return angles[0].cpu().double(), float(conf[0]), sq


def viewpoint_prior(engine, image, box, category: str | None):
    """(PosePrior or None, grid-pose subset or None) from the S1 prediction, as the settings ask:
    a soft prior (search_prior_weight) and/or a hard cut to the grid poses near the prediction
    (search_prior_radius_deg, with its flip when search_prior_flips). (None, None) without a
    viewpoint model."""
    import numpy as np

    from models.viewpoint import PosePrior, poses_near

    settings = get_settings()
    model = get_viewpoint_model()
    if model is None:
        return None, None
    grid = engine.grid
    angles, conf, _ = photo_viewpoint(model, image, box, category, engine.views.config.margin)
    prior = None
    if settings.search_prior_weight is not None:
        prior = PosePrior.from_prediction(angles.tolist(), conf, settings.search_prior_weight, settings.search_prior_flip_cost,
                                          settings.search_prior_confidence_power)
    elif settings.search_prior_radius_deg is None:   # asked for while the settings turn both forms off
        prior = PosePrior.from_prediction(angles.tolist(), conf)
    subset = None
    if settings.search_prior_radius_deg is not None:
        subset = poses_near(_grid_rotations(grid.n_azimuth, grid.n_elevation, grid.n_theta), angles,
                            settings.search_prior_radius_deg, settings.search_prior_flips).numpy()
        if len(subset) == 0:
            subset = np.array([int(grid.nearest_index(*angles.numpy()))])
    return prior, subset


def search(engine, image, box, category: str | None, shape_ids: list[int] | None, top_k: int, refine: bool,
           prior: bool | None = None):
    """One search as the service answers it, for the API and for batch items alike. The viewpoint
    prior is used when asked, or by default when the settings enable it and the viewpoint model
    knows every category searched; its time shows as timing_ms['viewpoint_prior']. Callers hold `lock`."""
    import time

    settings = get_settings()
    enabled = settings.search_prior_weight is not None or settings.search_prior_radius_deg is not None
    if prior is None:
        prior = enabled and prior_covers(engine, category, shape_ids)
    pose_prior, subset, prior_ms = None, None, 0.0
    if prior:
        t0 = time.perf_counter()
        pose_prior, subset = viewpoint_prior(engine, image, box, category)
        prior_ms = (time.perf_counter() - t0) * 1000
    result = engine.search(image, box, category=category, shape_ids=shape_ids, top_k=top_k, refine=refine,
                           pose_subset=subset, prior=pose_prior)
    if pose_prior is not None or subset is not None:
        result.timing_ms["viewpoint_prior"] = round(prior_ms, 2)
        result.timing_ms["total"] = round(result.timing_ms["total"] + prior_ms, 2)
    return result
