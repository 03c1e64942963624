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


@lru_cache(maxsize=4)
def _weights(field: str):
    """A shipped model named by its settings field (its registry entry is imported with `models`)."""
    from models import checkpoint, normals, rotation, viewpoint  # noqa: F401  (register the models)

    settings = get_settings()
    path = getattr(settings, field)
    if not path.is_file():
        return None
    model, _ = checkpoint.load(path, settings.torch_device())
    return model


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

