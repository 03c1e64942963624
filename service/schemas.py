"""Request and response models of the v1 API."""
from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, Field

ShapeId = Annotated[int, Path(ge=0, le=2**62, description="shape id")]
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$", description="job id")]


class ShapeOut(BaseModel):
    id: int
    name: str
    category: str
    vertices: int
    faces: int
    indexed: bool
    subtype: str = ""
    license: str = ""
    attribution: str = ""
    index_status: str = Field("pending", description="pending, indexing, indexed or failed")

    model_config = {"json_schema_extra": {"examples": [{
        "id": 1, "name": "sedan", "category": "car", "vertices": 1204, "faces": 2380, "indexed": True,
        "subtype": "four-door saloon car", "license": "CC0-1.0", "attribution": "", "index_status": "indexed",
    }]}}


class Health(BaseModel):
    status: str
    shapes: int
    indexed: int
    device: str
    index: dict = Field(default_factory=dict, description="background index build: state (idle, building, ready, failed), done, total")


class ErrorOut(BaseModel):
    detail: str
