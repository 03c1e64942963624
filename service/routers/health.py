from __future__ import annotations

from fastapi import APIRouter, Depends

from shape_library.library import ShapeLibrary
from shape_library.settings import Settings

from ..deps import library_dep, settings_dep
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness and library size")
def healthz(library: ShapeLibrary = Depends(library_dep), settings: Settings = Depends(settings_dep)) -> Health:
    shapes = library.shapes()
    from ..indexing import status

    return Health(status="ok", shapes=len(shapes), indexed=sum(s.as_dict()["indexed"] for s in shapes), device=settings.torch_device(),
                  index=status())
