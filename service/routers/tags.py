"""Calibrated multi-label tags of a photo (quasibinary classifier), including "none of these"."""
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

router = APIRouter(prefix="/v1/tags", tags=["tags"])
_lock = threading.Lock()


class Tag(BaseModel):
    label: str
    probability: float = Field(description="calibrated probability that an object of this category is in the photo")


class TagsOut(BaseModel):
    tags: list[Tag] = Field(description="every label of the vocabulary, most probable first")
    none: bool = Field(description="true when no label reaches the calibrated threshold: none of these is present")
    threshold: float = Field(description="the calibrated 'none' threshold on the largest probability")

    model_config = {"json_schema_extra": {"examples": [{
        "tags": [{"label": "car", "probability": 0.91}, {"label": "boat", "probability": 0.04}], "none": False, "threshold": 0.42}]}}


def tag_photo(img, box=None) -> TagsOut:
    """Tags of a decoded photo (shared with the search's no-match decision)."""
    tagger = warm_engine.get_tagger()
    if tagger is None:
        raise HTTPException(503, f"tagger weights not found at {get_settings().tagger_weights}")
    with heavy(), _lock:
        probs = tagger.probabilities(img, box)
    tags = sorted((Tag(label=lab, probability=round(float(p), 4)) for lab, p in zip(tagger.labels, probs)),
                  key=lambda t: -t.probability)
    return TagsOut(tags=tags, none=bool(probs.max() < tagger.threshold), threshold=tagger.threshold)


def _predict(data: bytes, bbox: str | None) -> TagsOut:
    img = decode_image(data, get_settings().max_image_pixels)
    return tag_photo(img, parse_bbox(bbox, img))


@router.post("", response_model=TagsOut,
             responses={413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="Which library categories are in the photo (several, one, or none of them)")
async def tags(
    image: UploadFile | None = File(None, description="JPEG, PNG or WebP photo"),
    bbox: str | None = Form(None, description="x0,y0,x1,y1 in pixels; the whole image when absent"),
) -> TagsOut:
    data = await read_upload(image, get_settings().max_upload_bytes)
    return await run_in_threadpool(_predict, data, bbox)
