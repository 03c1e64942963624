"""The search engine of this process: weights loaded once, index codes kept warm."""
from __future__ import annotations

import json
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import HTTPException

from shape_library.bootstrap import library_from_settings
from shape_library.settings import get_settings

_lock = threading.Lock()


def weights_path() -> Path:
    s = get_settings()
    return Path(s.matching_weights)


@lru_cache(maxsize=1)
def _engine():
    from shape_library.bootstrap import feature_index_from_settings, view_index_from_settings
    from shape_library.search import SearchEngine

    settings = get_settings()
    library = library_from_settings(settings)
    parts = feature_index_from_settings(settings, view_index_from_settings(settings, library))
    if parts is None:
        return None
    model, features = parts
    card = weights_path().with_suffix(".json")
    threshold = json.loads(card.read_text()).get("no_match_threshold_deg") if card.is_file() else None
    return SearchEngine(library, features, model, features.device, no_match_threshold_deg=threshold)


def get_engine():
    with _lock:
        engine = _engine()
    if engine is None:
        raise HTTPException(503, f"matching weights not found at {weights_path()}")
    return engine


def reset_engine() -> None:
    _engine.cache_clear()
