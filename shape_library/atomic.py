"""Crash- and disk-full-safe files for the view index and the codes.

A file is written to a temporary file in the same folder, flushed, fsync'ed and renamed over the
old one (`os.replace`), then the folder is fsync'ed: a reader sees the old file or the new one,
never half of one, and a write that fails (disk full, read-only folder) leaves the old file as it
was and no temporary file behind. Each index file also carries a SHA-256 of its content, checked on
load (see `ViewIndex.load`, `FeatureIndex.codes`), so a file damaged on disk is detected, removed
and rebuilt from the catalog instead of being served.

Write failures become an `IndexWriteError` that names the folder and the cause, e.g.
"cannot write the view index in var/index/839b…: No space left on device (ENOSPC)".
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per write() call: a full disk fails part-way, as it would for real

_state_lock = threading.Lock()
_last_error: dict | None = None


class IndexWriteError(OSError):
    """An index file could not be written: the folder and the cause, in words."""

    def __init__(self, what: str, folder: Path, cause: OSError):
        self.what, self.folder, self.cause = what, Path(folder), cause
        self.message = (f"cannot write the {what} in {self.folder}: {describe_oserror(cause)}; "
                        f"free some space or make the folder writable, then index again")
        super().__init__(cause.errno, self.message)

    def __str__(self) -> str:
        return self.message


def describe_oserror(exc: OSError) -> str:
    """'No space left on device (ENOSPC)' rather than '[Errno 28] ...: /path/file.tmp'."""
    code = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text} ({code})" if code else text


def record_write_error(exc: IndexWriteError | None) -> None:
    """Remember the last index write failure of this process (cleared by the next successful write)."""
    global _last_error
    with _state_lock:
        _last_error = None if exc is None else {"error": str(exc), "folder": str(exc.folder),
                                                "errno": errno.errorcode.get(exc.errno or 0), "at": time.time()}


def last_write_error() -> dict | None:
    with _state_lock:
        return dict(_last_error) if _last_error else None


# Indirections the fault tests replace ------------------------------------------------------------
def _mkstemp(folder: Path, prefix: str) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")


def _write_chunk(f, chunk: bytes) -> None:
    f.write(chunk)


def _replace(src: str, dst: Path) -> None:
    os.replace(src, dst)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders; the rename is done either way
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` all or nothing; raises the OSError of a failed write, leaving no temp file."""
    path = Path(path)
    fd, tmp = _mkstemp(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            view = memoryview(data)
            for i in range(0, len(view), CHUNK):
                _write_chunk(f, view[i : i + CHUNK])
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("could not remove the temporary file %s: %s", tmp, describe_oserror(exc))
        raise
    _fsync_dir(path.parent)


def probe_writable(folder: Path) -> None:
    """Create the folder if needed and a file in it; raises the OSError when that is not possible."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(folder, ".probe.")
    os.close(fd)
    os.unlink(tmp)


def remove_quietly(*paths: Path) -> None:
    """Delete files, logging (not raising) what a read-only folder refuses."""
    for p in paths:
        try:
            Path(p).unlink(missing_ok=True)
        except OSError as exc:
            log.error("could not remove %s: %s", p, describe_oserror(exc))


def remove_stale_temp_files(folder: Path, older_than_s: float = 3600.0) -> int:
    """Delete temporary files left by a process killed mid-write (never read); returns how many.

    Only old ones: a younger one may be another process's write in progress."""
    folder, n = Path(folder), 0
    if not folder.is_dir():
        return 0
    now = time.time()
    for p in folder.glob("*.tmp"):  # pathlib's * matches names starting with a dot too
        try:
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()
                n += 1
        except OSError:
            pass
    return n
