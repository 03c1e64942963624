"""The learned class hierarchy (Vec2Bundle) and hedged answers: bundles of shapes instead of a guess."""
from __future__ import annotations

import threading

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from models.vec2bundle import PREDICTORS
from shape_library import warm_engine
from shape_library.settings import get_settings

from ..schemas import ErrorOut
from ..security import heavy
from ..uploads import decode_image, parse_bbox, read_upload

router = APIRouter(prefix="/v1/hierarchy", tags=["hierarchy"])
_lock = threading.Lock()


class BundleOut(BaseModel):
    labels: list[str] = Field(description="the classes of the bundle, `category/shape name`")
    probability: float = Field(description="probability that the photo shows one of them")
    specificity: float = Field(description="1 - log2|bundle| / log2 N: 1 for one class, 0 for all of them")
    name: str = Field(description="a short description of the bundle")
    shape_ids: list[int] = Field(description="the bundle's shapes in this server's library (to restrict a search)")


class PredictOut(BaseModel):
    bundles: list[BundleOut]
    predictor: str
    tradeoff: float

    model_config = {"json_schema_extra": {"examples": [{
        "bundles": [{"labels": ["car/sedan-03", "car/sedan-07", "car/coupe-01"], "probability": 0.93, "specificity": 0.78,
                     "name": "car ×3", "shape_ids": [4, 9]}], "predictor": "darts", "tradeoff": 0.5}]}}


def _predictor():
    pred = warm_engine.get_bundle_predictor()
    if pred is None:
        raise HTTPException(503, f"hierarchy weights not found at {get_settings().hierarchy_weights}")
    return pred


def _shape_ids(labels: list[str]) -> list[int]:
    from shape_library.bootstrap import library_from_settings

    wanted = {tuple(lab.split("/", 1)) for lab in labels}
    return sorted(s.id for s in library_from_settings().shapes() if (s.category, s.name) in wanted)


@router.get("", summary="The learned hierarchy as nested JSON",
            responses={503: {"model": ErrorOut}})
def hierarchy() -> dict:
    """`{"name", "labels", "children"}` per node, leaves are classes; `predictors` lists the predictors."""
    pred = _predictor()
    return {"tree": pred.tree_json(), "classes": len(pred.labels), "predictors": list(PREDICTORS)}


def _predict(data: bytes, bbox: str | None, tradeoff: float, predictor: str) -> PredictOut:
    img = decode_image(data, get_settings().max_image_pixels)
    box = parse_bbox(bbox, img)
    pred = _predictor()
    with heavy(), _lock:
        probs = warm_engine.class_probabilities(pred.model, img, box)
        bundles = pred.bundles(probs, tradeoff, predictor)
    return PredictOut(bundles=[BundleOut(**b.as_dict(), shape_ids=_shape_ids(b.labels)) for b in bundles],
                      predictor=predictor, tradeoff=tradeoff)


@router.post("/predict", response_model=PredictOut,
             responses={413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="Hedged prediction: the bundle(s) of classes the photo belongs to")
async def predict(
    image: UploadFile | None = File(None, description="JPEG, PNG or WebP photo"),
    bbox: str | None = Form(None, description="x0,y0,x1,y1 in pixels; the whole image when absent"),
    tradeoff: float = Form(0.5, description="0 = most specific (one class) … 1 = safest (large bundles)"),
    predictor: str = Form("darts", description=f"one of {', '.join(PREDICTORS)}"),
) -> PredictOut:
    if not 0.0 <= tradeoff <= 1.0:
        raise HTTPException(422, f"tradeoff must be in [0, 1], got {tradeoff}")
    if predictor not in PREDICTORS:
        raise HTTPException(422, f"unknown predictor {predictor!r}; choose one of {', '.join(PREDICTORS)}")
    data = await read_upload(image, get_settings().max_upload_bytes)
    return await run_in_threadpool(_predict, data, bbox, tradeoff, predictor)
