"""Turning a batch upload (image parts or one zip) into stored job items.

Every image is checked by content before it is kept; what is not an image is listed as
skipped with the reason, never silently dropped. Zips are read entry by entry with a byte
cap per entry and in total (zip bombs), names are never used as paths (traversal), and
nested folders, hidden files and macOS resource forks are ignored.
"""
from __future__ import annotations

import io
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from shape_library.images import ALLOWED_FORMATS, InputRejected

EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class StoredInputs:
    folder: Path
    names: list[str] = field(default_factory=list)     # original names, one per kept image
    files: list[str] = field(default_factory=list)     # stored file names inside `folder`
    skipped: list[str] = field(default_factory=list)   # "name: reason"


def sniff_format(data: bytes) -> str | None:
    """JPEG/PNG/WEBP by content (header only, nothing decoded), else None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format if img.format in ALLOWED_FORMATS else None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


class InputWriter:
    def __init__(self, folder: Path, max_items: int, max_item_bytes: int):
        self.out = StoredInputs(folder)
        self.max_items = max_items
        self.max_item_bytes = max_item_bytes
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, data: bytes) -> None:
        if len(self.out.files) >= self.max_items:
            raise InputRejected(413, f"more than {self.max_items} images in one job")
        if not data:
            self.out.skipped.append(f"{name}: empty file")
            return
        if len(data) > self.max_item_bytes:
            self.out.skipped.append(f"{name}: larger than {self.max_item_bytes} bytes")
            return
        fmt = sniff_format(data)
        if fmt is None:
            self.out.skipped.append(f"{name}: not a JPEG, PNG or WebP image")
            return
        stored = f"{len(self.out.files):06d}.{EXT[fmt]}"
        (self.out.folder / stored).write_bytes(data)
        self.out.names.append(name)
        self.out.files.append(stored)

    def add_zip(self, fileobj: BinaryIO, max_total_bytes: int) -> None:
        try:
            archive = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise InputRejected(422, f"archive is not a readable zip file: {exc}") from None
        with archive:
            entries = [e for e in archive.infolist() if not e.is_dir()]
            if len(entries) > 4 * self.max_items:
                raise InputRejected(413, f"archive lists {len(entries)} files; at most {4 * self.max_items}")
            total = 0
            for entry in entries:
                name = entry.filename
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if any(p in ("..", "") for p in parts) or name.startswith(("/", "\\")) or ":" in parts[0]:
                    self.out.skipped.append(f"{name}: unsafe path in archive")
                    continue
                if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                    continue  # hidden files and macOS resource forks are not photos
                if entry.flag_bits & 0x1:
                    self.out.skipped.append(f"{name}: encrypted")
                    continue
                try:
                    with archive.open(entry) as f:
                        data = f.read(self.max_item_bytes + 1)  # a lying header cannot make us read more
                except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
                    self.out.skipped.append(f"{name}: unreadable ({exc})")
                    continue
                total += len(data)
                if total > max_total_bytes:
                    raise InputRejected(413, f"archive expands past the limit of {max_total_bytes} bytes")
                self.add(name, data)

    def discard(self) -> None:
        shutil.rmtree(self.out.folder, ignore_errors=True)
