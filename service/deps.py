"""Objects a request needs, created once per process."""
from __future__ import annotations

from shape_library.bootstrap import library_from_settings
from shape_library.library import ShapeLibrary
from shape_library.settings import Settings, get_settings


def settings_dep() -> Settings:
    return get_settings()


def library_dep() -> ShapeLibrary:
    return library_from_settings(get_settings())
