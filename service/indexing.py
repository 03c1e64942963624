"""Building the view index and codes in the background, so the API answers from the first second."""
from __future__ import annotations

import logging
import threading
import time

from shape_library.settings import get_settings

log = logging.getLogger(__name__)

_state = {"state": "idle", "done": 0, "total": 0, "error": None, "started": None, "finished": None}
_lock = threading.Lock()
_thread: threading.Thread | None = None


def status() -> dict:
    with _lock:
        return dict(_state)


def reset() -> None:
    """Back to the state a fresh process starts in (for tests, which share one process)."""
    with _lock:
        _state.update(state="idle", done=0, total=0, error=None, started=None, finished=None)


def _set(**kw) -> None:
    with _lock:
        _state.update(kw)


def _run() -> None:
    from shape_library.bootstrap import bootstrap, build_index_and_codes, view_index_from_settings

    settings = get_settings()
    try:
        _set(state="importing", error=None)
        library = bootstrap(settings, build_index=False, progress=False)  # a no-op when `serve` did it
        views = view_index_from_settings(settings, library)
        _set(state="building", total=len(library.shapes()), done=0, started=time.time(), error=None)

        def progress(done: int, total: int) -> None:
            _set(done=done, total=total)

        build_index_and_codes(settings, views, on_shape=progress)
        _set(state="ready", done=len(library.shapes()), finished=time.time())
        log.info("view index ready")
    except Exception as exc:  # reported on /healthz, the API keeps serving
        log.exception("index build failed")
        _set(state="failed", error=f"{type(exc).__name__}: {exc}")


def start_background_index() -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _thread = threading.Thread(target=_run, name="index-builder", daemon=True)
    _thread.start()
