"""S3 rotation of a rendered shape: the library -> camera rotation as a quaternion and a matrix."""
from __future__ import annotations

import threading

import numpy as np
from fastapi import APIRouter, File, HTTPException, UploadFile
from PIL import Image, ImageOps
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from shape_library import warm_engine
from shape_library.settings import get_settings

from ..schemas import ErrorOut
from ..security import heavy
from ..uploads import decode_image, read_upload

router = APIRouter(prefix="/v1/rotation", tags=["rotation"])
_lock = threading.Lock()


class RotationOut(BaseModel):
    quaternion: list[float] = Field(description="[w, x, y, z], unit, w >= 0")
    matrix: list[list[float]] = Field(description="3x3 rotation R from the library frame to the camera frame (contract)")
    azimuth: float = Field(description="the same rotation as contract angles, degrees")
    elevation: float
    theta: float

    model_config = {"json_schema_extra": {"examples": [{
        "quaternion": [0.92, 0.1, -0.2, 0.3], "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "azimuth": 30.0, "elevation": 10.0, "theta": 0.0}]}}


def square_on_white(img: Image.Image, size: int) -> np.ndarray:
    """Pad to a square on white (the renderings' background), then resize: the object keeps its scale."""
    grey = img.convert("L")
    side = max(grey.size)
    canvas = Image.new("L", (side, side), 255)
    canvas.paste(grey, ((side - grey.width) // 2, (side - grey.height) // 2))
    return np.asarray(ImageOps.fit(canvas, (size, size), Image.Resampling.BILINEAR))


def _predict(data: bytes) -> RotationOut:
    import torch

    from models.geometry import matrix_to_euler

    settings = get_settings()
    img = decode_image(data, settings.max_image_pixels)
    model = warm_engine.get_rotation_model()
    if model is None:
        raise HTTPException(503, f"rotation weights not found at {settings.rotation_weights}")
    x = torch.from_numpy(square_on_white(img, model.config.input_size)).float().div(255).sub(0.5)[None, None]
    with heavy(), _lock:
        q, R = model.predict(x.to(next(model.parameters()).device))
    a, e, t = (float(torch.rad2deg(v)) for v in matrix_to_euler(R[0].double().cpu()))
    return RotationOut(quaternion=[float(v) for v in q[0]], matrix=R[0].cpu().tolist(), azimuth=a, elevation=e, theta=t)


@router.post("", response_model=RotationOut,
             responses={413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="3D rotation (S3 spherical regression) of a texture-free rendering on white")
async def rotation(image: UploadFile | None = File(None, description="a grey rendering of one shape on white, centred")) -> RotationOut:
    data = await read_upload(image, get_settings().max_upload_bytes)
    return await run_in_threadpool(_predict, data)
