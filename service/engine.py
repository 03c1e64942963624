"""The search engine for a request: 503 naming the missing weights when there are none."""
from __future__ import annotations

from fastapi import HTTPException

from shape_library import warm_engine
from shape_library.settings import get_settings

reset_engine = warm_engine.reset_engine
engine_lock = warm_engine.lock


def get_engine():
    engine = warm_engine.get_engine()
    if engine is None:
        raise HTTPException(503, f"matching weights not found at {get_settings().matching_weights}")
    return engine
