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
    from models import checkpoint
    from models import matching  # noqa: F401
    from shape_library.features import FeatureIndex
    from shape_library.index import ViewIndex, ViewIndexConfig
    from shape_library.search import SearchEngine

    settings = get_settings()
    path = weights_path()
    if not path.is_file():
        return None
    device = settings.torch_device()
    model, meta = checkpoint.load(path, device)
    library = library_from_settings(settings)
    views = ViewIndex(settings.index_dir, library, ViewIndexConfig(canvas=settings.render_size))
    features = FeatureIndex(views, model, checkpoint.file_hash(path), device=device)
    card = path.with_suffix(".json")
    threshold = None
    if card.is_file():
        threshold = json.loads(card.read_text()).get("no_match_threshold_deg")
    return SearchEngine(library, features, model, device, no_match_threshold_deg=threshold)


def get_engine():
    with _lock:
        engine = _engine()
    if engine is None:
        raise HTTPException(503, f"matching weights not found at {weights_path()}")
    return engine


def reset_engine() -> None:
    _engine.cache_clear()
