"""Where new job items go: the embedded thread executor or Celery, chosen by settings.

With Celery, the API also runs a sweeper: an item whose worker died (lease expired) or whose
message was lost (queued too long, e.g. a broker restarted without persistence) is sent again.
Sending twice is safe; the job store records each item once.
"""
from __future__ import annotations

import logging
import threading

from shape_library.settings import get_settings

from . import items
from .thread_executor import ThreadExecutor

log = logging.getLogger(__name__)

_executor: ThreadExecutor | None = None
_sweeper: threading.Thread | None = None
_stop = threading.Event()
_lock = threading.Lock()


def _send_celery(pairs: list[tuple[str, int]]) -> None:
    from .celery_app import process_item

    for job_id, idx in pairs:
        process_item.apply_async((job_id, idx))


def submit(pairs: list[tuple[str, int]]) -> None:
    if not pairs:
        return
    if get_settings().executor == "celery":
        _send_celery(pairs)
        items.store().mark_enqueued(pairs)
    else:
        with _lock:
            executor = _executor
        if executor is None:
            start()
            executor = _executor
        executor.submit(pairs)


def sweep_once() -> int:
    stale = items.store().stale_items(get_settings().requeue_after_s)
    if stale:
        log.warning("re-sending %d lost job items", len(stale))
        _send_celery(stale)
    return len(stale)


def _sweep_loop() -> None:
    while not _stop.wait(get_settings().sweep_interval_s):
        try:
            sweep_once()
        except Exception:
            log.exception("sweep failed")


def start() -> None:
    """Called once by the API process on start-up."""
    global _executor, _sweeper
    settings = get_settings()
    with _lock:
        _stop.clear()
        if settings.executor == "thread":
            if _executor is None:
                _executor = ThreadExecutor(settings.job_threads)
                _executor.start()
        elif _sweeper is None or not _sweeper.is_alive():
            _sweeper = threading.Thread(target=_sweep_loop, name="job-sweeper", daemon=True)
            _sweeper.start()


def stop() -> None:
    global _executor, _sweeper
    with _lock:
        _stop.set()
        if _executor is not None:
            _executor.stop()
        _executor, _sweeper = None, None


def pending() -> int:
    return _executor.pending() if _executor is not None else 0
