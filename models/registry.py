"""Models registered by name with their config dataclass (the timm way)."""
from __future__ import annotations

from typing import Any, Callable

_REGISTRY: dict[str, Callable[..., Any]] = {}
# The modules that register models, imported on the first miss so that loading a checkpoint never
# depends on which model modules the caller happened to import.
_MODULES = ("matching", "viewpoint", "rotation", "normals", "tagger", "embedding")


def register(name: str):
    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def _import_all() -> None:
    import importlib

    for module in _MODULES:
        importlib.import_module(f"{__package__}.{module}")


def create(name: str, **overrides):
    if name not in _REGISTRY:
        _import_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**overrides)


def names() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)
