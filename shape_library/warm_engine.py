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
