"""S2 surface normals of a photo: a unit normal per pixel, as a colour-coded PNG or a float32 .npy.

Frame: the contract's camera frame (the camera looks along -z, +y is up in the image, +x right),
normals facing the viewer (n_z > 0 for surfaces seen head-on).  The network runs on the photo
resized so that its longer side is the model's input size (64 px for the shipped model); its
output is upsampled (bilinear, renormalised) to the photo's own size, or, for photos larger than
`MAX_OUTPUT_SIDE` on their longer side, to that size with the aspect kept.  The headers
`X-Normals-Width` / `X-Normals-Height` give the output size, `X-Model-Resolution` the size the
network saw.

* ``format=png`` (default): RGB = (n + 1) / 2 * 255, rounded.
* ``format=npy``: ``numpy.save`` of a float32 (H, W, 3) array of unit vectors
  (`application/octet-stream`; read with ``np.load(io.BytesIO(body))``).
"""
from __future__ import annotations

import io
import threading

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from shape_library import warm_engine
from shape_library.settings import get_settings

from ..schemas import ErrorOut
from ..security import heavy
from ..uploads import decode_image, read_upload

router = APIRouter(prefix="/v1/normals", tags=["normals"])
_lock = threading.Lock()
FORMATS = ("png", "npy")
MAX_OUTPUT_SIDE = 1024


def working_size(width: int, height: int, side: int, minimum: int = 16) -> tuple[int, int]:
    """The network's input size for a photo: longer side `side`, aspect kept, each side >= `minimum`."""
    s = side / max(width, height)
    return max(minimum, int(round(width * s))), max(minimum, int(round(height * s)))


def output_size(width: int, height: int, limit: int = MAX_OUTPUT_SIDE) -> tuple[int, int]:
    s = min(1.0, limit / max(width, height))
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def predict_normals(model, img: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) float32 unit camera-frame normals at `output_size` of the photo, and the working size."""
    from torch.nn import functional as F

    from models.normals import images_to_tensor

    ww, wh = working_size(img.width, img.height, model.config.input_size)
    x = images_to_tensor(np.asarray(img.resize((ww, wh), Image.Resampling.BILINEAR))[None])
    with heavy(), _lock:
        n = model.predict(x.to(next(model.parameters()).device))[0].cpu()       # (wh, ww, 3)
    ow, oh = output_size(img.width, img.height)
    n = F.interpolate(n.permute(2, 0, 1)[None], size=(oh, ow), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return n.numpy().astype(np.float32), (ww, wh)


def _predict(data: bytes, fmt: str) -> Response:
    settings = get_settings()
    img = decode_image(data, settings.max_image_pixels)
    model = warm_engine.get_normals_model()
    if model is None:
        raise HTTPException(503, f"normals weights not found at {settings.normals_weights}: train them with "
                                 "`python -m models.train_normals`")
    n, (ww, wh) = predict_normals(model, img)
    headers = {"X-Normals-Width": str(n.shape[1]), "X-Normals-Height": str(n.shape[0]),
               "X-Model-Resolution": f"{ww}x{wh}", "X-Normals-Frame": "camera: -z forward, +y up, facing the viewer"}
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, n)
        return Response(buf.getvalue(), media_type="application/octet-stream",
                        headers={**headers, "Content-Disposition": 'attachment; filename="normals.npy"'})
    rgb = np.clip((n + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers=headers)


@router.post("", response_class=Response,
             responses={200: {"content": {"image/png": {}, "application/octet-stream": {}},
                              "description": "the normal map: colour-coded PNG or float32 (H, W, 3) .npy"},
                        413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="Surface normals per pixel (S2 spherical regression), camera frame")
async def normals(
    image: UploadFile | None = File(None, description="a photo (JPEG, PNG or WebP)"),
    format: str = Form("png", description="`png` (colour-coded, (n + 1) / 2 * 255) or `npy` (float32 (H, W, 3))"),
) -> Response:
    fmt = (format or "png").strip().lower()
    if fmt not in FORMATS:
        raise HTTPException(422, f"unknown format {format!r}: use 'png' or 'npy'")
    data = await read_upload(image, get_settings().max_upload_bytes)
    return await run_in_threadpool(_predict, data, fmt)
