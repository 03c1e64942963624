"""S1 viewpoint of the object in a photo: azimuth, elevation, in-plane rotation (contract convention)."""
from __future__ import annotations

import threading
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from shape_library import warm_engine
from shape_library.settings import get_settings

from ..schemas import ErrorOut
from ..security import heavy
from ..uploads import decode_image, parse_bbox, read_upload

router = APIRouter(prefix="/v1/viewpoint", tags=["viewpoint"])
_lock = threading.Lock()


class ViewpointOut(BaseModel):
    azimuth: float = Field(description="degrees, [0, 360)")
    elevation: float = Field(description="degrees, [-90, 90]")
    theta: float = Field(description="in-plane rotation, degrees, [-180, 180)")
    confidence: float = Field(description="certainty of the three sign classifications, in [0, 1]")
    category_head: str = Field(description="the category head that answered ('*' = generic)")
    photo_box: list[float] = Field(description="square box of the photo the network saw, pixels")

    model_config = {"json_schema_extra": {"examples": [{"azimuth": 42.0, "elevation": 11.5, "theta": -2.0, "confidence": 0.93,
                                                        "category_head": "car", "photo_box": [10, 20, 200, 210]}]}}


def _predict(data: bytes, bbox: str | None, category: str | None) -> ViewpointOut:
    from shape_library.index import ViewIndexConfig
    settings = get_settings()
    img = decode_image(data, settings.max_image_pixels)
    box = parse_bbox(bbox, img)
    model = warm_engine.get_viewpoint_model()
    if model is None:
        raise HTTPException(503, f"viewpoint weights not found at {settings.viewpoint_weights}")
    known = model.names[:-1]
    if category and category not in known:
        raise HTTPException(422, f"no viewpoint head for category {category!r}; known: {', '.join(known)} (or leave it out)")
    with heavy(), _lock:
        angles, conf, sq = warm_engine.photo_viewpoint(model, img, box, category or None, ViewIndexConfig().margin)
    a, e, t = (float(v) for v in angles)
    return ViewpointOut(azimuth=a, elevation=e, theta=t, confidence=conf, category_head=category or "*",
                        photo_box=[float(v) for v in sq])


@router.post("", response_model=ViewpointOut,
             responses={413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="Viewpoint (S1 spherical regression) of the object inside the box")
async def viewpoint(
    image: UploadFile | None = File(None, description="JPEG, PNG or WebP photo"),
    bbox: str | None = Form(None, description="x0,y0,x1,y1 in pixels; the whole image when absent"),
    category: str | None = Form(None, description="use this category's head (aeroplane, boat, car); generic otherwise"),
) -> ViewpointOut:
    data = await read_upload(image, get_settings().max_upload_bytes)
    return await run_in_threadpool(_predict, data, bbox, category)
