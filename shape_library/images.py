"""Untrusted images: checked by content, bounded in pixels, EXIF-oriented; shared by the API and the workers."""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class InputRejected(ValueError):
    """Bad input from a user; `status` is the HTTP status that names the problem (413, 415 or 422)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """A JPEG/PNG/WebP as an RGB image with EXIF orientation applied; 4xx for anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise InputRejected(415, f"unsupported image type {fmt or 'unknown'}: send JPEG, PNG or WebP")
            w, h = img.size
            if w * h > max_pixels:
                raise InputRejected(413, f"image has {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            if w < 8 or h < 8:
                raise InputRejected(422, f"image of {w}x{h} pixels is too small (at least 8x8)")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode not in ("RGB", "L"):
                bg = Image.new("RGB", img.size, (255, 255, 255))
                rgba = img.convert("RGBA")
                bg.paste(rgba, mask=rgba.getchannel("A"))
                img = bg
            return img.convert("RGB")
    except InputRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputRejected(415 if isinstance(exc, UnidentifiedImageError) else 413,
                            "not a readable JPEG, PNG or WebP image" if isinstance(exc, UnidentifiedImageError) else f"image rejected: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputRejected(422, f"broken image data: {exc}") from None


def parse_bbox(text: str | None, image: Image.Image) -> tuple[float, float, float, float] | None:
    """'x0,y0,x1,y1' in pixels, inside the image and non-empty."""
    if text is None or not text.strip():
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise InputRejected(422, "bbox must be four numbers 'x0,y0,x1,y1' in pixels") from None
    vals = (x0, y0, x1, y1)
    if any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise InputRejected(422, "bbox must be finite numbers")
    if not (x1 > x0 and y1 > y0):
        raise InputRejected(422, "bbox needs x1 > x0 and y1 > y0")
    if x0 < 0 or y0 < 0 or x1 > image.width or y1 > image.height:
        raise InputRejected(422, f"bbox {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {image.width}x{image.height} image")
    if (x1 - x0) < 4 or (y1 - y0) < 4:
        raise InputRejected(422, "bbox is smaller than 4 pixels")
    return vals
