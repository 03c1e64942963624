from __future__ import annotations

import os

from fastapi import APIRouter, Depends

from shape_library.library import ShapeLibrary
from shape_library.settings import Settings

from ..deps import library_dep, settings_dep
from ..schemas import Health

router = APIRouter(tags=["health"])


def _index_health(settings: Settings) -> dict:
    """The background build's state, plus whether the index folder takes writes and the last write
    failure of this process: 'degraded' (search of indexed shapes works, indexing does not) when not."""
    from shape_library.atomic import last_write_error

    from ..indexing import status

    out = status()
    folder = settings.index_dir
    probe = folder
    while not probe.exists() and probe.parent != probe:  # not made yet: can it be?
        probe = probe.parent
    out["folder"] = str(folder)
    out["writable"] = os.access(probe, os.W_OK)
    out["write_error"] = last_write_error()
    return out


@router.get("/healthz", response_model=Health, summary="Liveness and library size")
def healthz(library: ShapeLibrary = Depends(library_dep), settings: Settings = Depends(settings_dep)) -> Health:
    shapes = library.shapes()
    index = _index_health(settings)
    degraded = index["state"] == "failed" or not index["writable"] or index["write_error"] is not None
    return Health(status="degraded" if degraded else "ok", shapes=len(shapes), indexed=sum(s.as_dict()["indexed"] for s in shapes),
                  device=settings.torch_device(), index=index)
