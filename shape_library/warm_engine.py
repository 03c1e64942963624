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
    return SearchEngine(library, features, model, features.device, no_match_threshold_deg=threshold)


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


def prior_subset(engine, image, box, category: str | None, radius_deg: float, flips: bool = True):
    """Grid poses near the S1 viewpoint prediction (and its front/back flip): the only ones the
    search then scores. None when there is no viewpoint model."""
    import numpy as np

    from models.viewpoint import poses_near

    from .search import photo_crop, photos_to_tensor

    model = get_viewpoint_model()
    if model is None:
        return None
    grid = engine.grid
    crop, _ = photo_crop(image, box, model.config.input_size, engine.views.config.margin)
    x = photos_to_tensor(np.asarray(crop)[None]).to(next(model.parameters()).device)
    pred, _ = model.predict(x, [category if category in model.names else None])
    subset = poses_near(_grid_rotations(grid.n_azimuth, grid.n_elevation, grid.n_theta), pred[0].cpu(), radius_deg, flips)
    if len(subset) == 0:
        subset = np.array([int(grid.nearest_index(*pred[0].cpu().numpy()))])
    return np.asarray(subset)

