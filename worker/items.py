"""Processing one job item, the same code under every executor (in-process threads or Celery).

`process` is idempotent: it claims the item in the job store first, so a duplicate delivery of
an item that is done, or being done by a live worker, does nothing; and the result is written
only by the claim that produced it. Bad input fails the item at once with the reason; any other
error is retried with exponential backoff up to `job_max_attempts`.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from shape_library.images import InputRejected, decode_image, parse_bbox
from shape_library.settings import get_settings

from .store import Item, Job, open_store

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """The item cannot succeed however often it is tried (bad input, a removed shape)."""


class RetryLater(Exception):
    def __init__(self, delay: float, reason: str):
        super().__init__(reason)
        self.delay = delay


class NotReady(RetryLater):
    """The item waits for something on its way (shapes still being indexed): tried again later, no attempt used."""


#: How soon a search item waiting for the view index looks again, seconds.
INDEX_POLL_S = 15.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff(attempt: int) -> float:
    return min(60.0, 2.0 ** attempt)


def store():
    return open_store(get_settings().jobs_url)


def item_path(job_id: str, name: str) -> Path:
    return get_settings().jobs_dir / job_id / name


# What each kind of item does -------------------------------------------------------
def search_item(job: Job, item: Item) -> dict:
    from shape_library import warm_engine

    settings = get_settings()
    params = {**json.loads(job.params), **json.loads(item.params)}
    path = item_path(job.id, item.input)
    if not path.is_file():
        raise PermanentError(f"the stored image {item.input} is missing")
    image = decode_image(path.read_bytes(), settings.max_image_pixels)
    box = parse_bbox(params.get("bbox"), image)
    engine = warm_engine.get_engine()
    if engine is None:
        raise PermanentError(f"matching weights not found at {settings.matching_weights}")
    shape_ids, searched_cats = params.get("shape_ids"), None
    cov = engine.coverage(params.get("category"), shape_ids)
    if cov.coming and time.time() - (job.created_at or 0.0) < settings.job_index_wait_s:
        # A fresh install (or a bulk import) is still indexing: wait for it rather than record a partial answer.
        raise NotReady(INDEX_POLL_S, f"waiting for the view index: {cov.indexed} of {cov.total} shapes searchable so far")
    if params.get("tag_filter") and not params.get("category"):
        shape_ids, searched_cats = warm_engine.tag_filtered_ids(engine.searchable_shapes(), image, box, shape_ids)
    with warm_engine.lock:
        result = warm_engine.search(engine, image, box, params.get("category"), shape_ids, int(params.get("top_k", 5)),
                                    bool(params.get("refine", True)), params.get("prior"))
        tag_none, tag_top = warm_engine.tagger_verdict(engine.library, image, box, params.get("category"), shape_ids)
    if result.candidates == 0 and shape_ids is None:
        # Nothing indexed yet (a fresh install still building): retried with backoff, not recorded as "no match".
        raise RuntimeError("no shape is searchable yet: the view index is still being built")
    return {"matches": [m.as_dict() for m in result.matches], "no_match": result.no_match or tag_none,
            "no_match_reason": "tagger" if tag_none else ("score" if result.no_match else None),
            "category_probability": tag_top, "tag_filter": searched_cats,
            "photo_box": [float(v) for v in result.photo_box], "candidates": result.candidates,
            "timing_ms": result.timing_ms, "bbox": list(box) if box else None,
            "indexed_shapes": cov.indexed, "library_shapes": cov.total, "notice": cov.notice()}


def index_item(job: Job, item: Item) -> dict:
    """Render the shape's grid views and their codes; a re-index renders them again."""
    from shape_library import warm_engine
    from shape_library.atomic import IndexWriteError
    from shape_library.bootstrap import library_from_settings, view_index_from_settings
    from shape_library.catalog import IndexStatus

    t0 = time.perf_counter()
    settings = get_settings()
    shape_id = int(item.input)
    library = library_from_settings(settings)
    if library.get(shape_id) is None:
        raise PermanentError(f"shape {shape_id} is no longer in the library")
    views = view_index_from_settings(settings, library)
    rendered = False
    if job.kind == "reindex" or not views.has(shape_id):
        try:
            views.build(shape_id, progress=False)
        except IndexWriteError as exc:  # disk full, read-only or forbidden index folder: say which and why
            raise PermanentError(str(exc)) from exc
        rendered = True
    else:
        views.load(shape_id)  # verifies the checksum; a damaged file raises and is rebuilt on retry
        library.set_status(shape_id, IndexStatus.indexed, views.config.key)
    engine = warm_engine.get_engine()
    if engine is not None:
        with warm_engine.lock:
            engine.features.build(shape_id)
    return {"shape_id": shape_id, "views": len(views.config.grid), "rendered": rendered,
            "codes": engine is not None, "seconds": round(time.perf_counter() - t0, 2)}


HANDLERS = {"search": search_item, "index": index_item, "reindex": index_item}


# The idempotent driver ----------------------------------------------------------------
def process(job_id: str, idx: int, worker: str | None = None) -> str:
    """Run one item; returns 'done', 'failed' or 'skipped'; raises RetryLater on a transient error."""
    settings = get_settings()
    jobs = store()
    token = jobs.claim(job_id, idx, worker or worker_name(), settings.item_lease_s)
    if token is None:
        return "skipped"
    job, item = jobs.get(job_id), jobs.item(job_id, idx)
    try:
        result = HANDLERS[job.kind](job, item)
    except (InputRejected, PermanentError) as exc:
        jobs.finish(job_id, idx, token, error=str(exc))
        return "failed"
    except NotReady as wait:
        jobs.release(job_id, idx, token, str(wait), counted=False)
        raise
    except Exception as exc:  # transient until proven otherwise: retried with backoff
        reason = f"{type(exc).__name__}: {exc}"
        if token >= settings.job_max_attempts:
            log.error("item %s/%s failed after %d attempts: %s", job_id, idx, token, reason)
            jobs.finish(job_id, idx, token, error=f"{reason} (after {token} attempts)")
            return "failed"
        log.warning("item %s/%s attempt %d failed, retrying: %s", job_id, idx, token, reason)
        jobs.release(job_id, idx, token, reason)
        raise RetryLater(backoff(token), reason) from exc
    return "done" if jobs.finish(job_id, idx, token, result=result) else "skipped"
