"""The embedded executor for `make run`: worker threads inside the API process, no broker.

The job store is the queue's memory: on start every unfinished item of an open job is queued
again, so an API restart loses nothing.
"""
from __future__ import annotations

import logging
import queue
import threading

from . import items

log = logging.getLogger(__name__)


class ThreadExecutor:
    def __init__(self, threads: int = 1):
        self.threads = threads
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._timers: set[threading.Timer] = set()
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._workers:
            return
        self._stopping.clear()
        jobs = items.store()
        jobs.requeue_running()  # this process is the only executor: nothing else can be running them
        for pair in jobs.open_items(include_running=False):
            self._queue.put(pair)
        for n in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"job-worker-{n}", daemon=True)
            t.start()
            self._workers.append(t)

    def submit(self, pairs: list[tuple[str, int]]) -> None:
        for pair in pairs:
            self._queue.put(pair)

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        for t in list(self._timers):
            t.cancel()
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join(timeout)
        self._workers.clear()

    def _later(self, pair: tuple[str, int], delay: float) -> None:
        def fire():
            self._timers.discard(timer)
            if not self._stopping.is_set():
                self._queue.put(pair)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _loop(self) -> None:
        name = f"{items.worker_name()}/{threading.current_thread().name}"
        while True:
            pair = self._queue.get()
            if pair is None or self._stopping.is_set():
                return
            try:
                items.process(*pair, worker=name)
            except items.RetryLater as retry:
                self._later(pair, retry.delay)
            except Exception:  # the store could not be reached: try the item again later
                log.exception("item %s/%s could not be processed", *pair)
                self._later(pair, 5.0)
