"""Celery workers: the same item code as the embedded executor, behind a real broker.

Redis when REDIS_URL is set, otherwise kombu's SQLAlchemy transport on SQLite in the data
folder. Tasks carry ids only; late acknowledgement plus a visibility timeout bring back the
task of a worker killed mid-item, and the job store keeps a duplicate from being recorded twice.

Start a worker with `shapesearch worker` (one process, one item at a time; scale by processes).
"""
from __future__ import annotations

from celery import Celery

from shape_library.settings import get_settings

from . import items


def make_app() -> Celery:
    settings = get_settings()
    if not settings.redis_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("shapesearch")
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        task_ignore_result=True,  # results live in the job store
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # ride out a broker restart
        # Redis only; on SQLite a lost task is found by the API's sweeper (see worker.dispatch).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s} if settings.redis_url else {},
        worker_hijack_root_logger=False,
        task_default_queue="shapesearch",
    )
    return app


app = make_app()


@app.task(name="shapesearch.process_item", bind=True, acks_late=True, max_retries=None)
def process_item(self, job_id: str, idx: int) -> str:
    try:
        return items.process(job_id, idx, worker=f"{self.request.hostname}:{items.worker_name()}")
    except items.RetryLater as retry:
        raise self.retry(countdown=retry.delay) from None
