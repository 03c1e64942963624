"""Untrusted image uploads: checked by content, bounded in bytes and pixels, EXIF-oriented."""
from __future__ import annotations

from fastapi import HTTPException, UploadFile

from shape_library.images import ALLOWED_FORMATS, InputRejected, decode_image, parse_bbox  # noqa: F401  (re-exported)


async def read_upload(upload: UploadFile | None, max_bytes: int, field: str = "image") -> bytes:
    if upload is None:
        raise HTTPException(422, f"missing file field '{field}'")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"'{field}' is larger than the limit of {max_bytes} bytes")
    if not data:
        raise HTTPException(422, f"'{field}' is empty (0 bytes)")
    return data


def parse_ids(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputRejected(422, "shape_ids must be a comma-separated list of integers") from None
    if not ids:
        raise InputRejected(422, "shape_ids is empty")
    return ids
