"""Prometheus metrics: requests and latency per route, plus queue, jobs and index read at scrape time."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response

REGISTRY = CollectorRegistry()
REQUESTS = Counter("shapesearch_http_requests_total", "HTTP requests by route template, method and status",
                   ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("shapesearch_http_request_seconds", "HTTP request latency by route template and method",
                    ["route", "method"], registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


def _route(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path or "unmatched"  # never the raw path: ids would explode the label set


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route(request)
            LATENCY.labels(route, request.method).observe(time.perf_counter() - t0)
            REQUESTS.labels(route, request.method, str(status)).inc()


class StateCollector:
    """Job queue, jobs by state and index size, read from the stores when Prometheus scrapes."""

    def describe(self):  # lets register() skip a collect() (and a database read) at import
        yield GaugeMetricFamily("shapesearch_queue_depth", "")
        yield GaugeMetricFamily("shapesearch_jobs", "", labels=["state"])
        yield GaugeMetricFamily("shapesearch_library_shapes", "", labels=["status"])
        yield GaugeMetricFamily("shapesearch_index_views", "")

    def collect(self):
        from shape_library.bootstrap import library_from_settings
        from shape_library.grid import PoseGrid
        from shape_library.settings import get_settings
        from worker.store import open_store

        settings = get_settings()
        jobs = open_store(settings.jobs_url)
        depth = GaugeMetricFamily("shapesearch_queue_depth", "job items queued or running")
        depth.add_metric([], jobs.queue_depth())
        yield depth
        by_state = GaugeMetricFamily("shapesearch_jobs", "jobs by state", labels=["state"])
        counts = jobs.status_counts()
        for state in ("queued", "running", "done", "failed", "cancelled"):
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        shapes = library_from_settings(settings).shapes()
        indexed = sum(s.index_status == "indexed" for s in shapes)
        lib = GaugeMetricFamily("shapesearch_library_shapes", "shapes in the library by index status", labels=["status"])
        for status in ("pending", "indexing", "indexed", "failed"):
            lib.add_metric([status], sum(s.index_status == status for s in shapes))
        yield lib
        views = GaugeMetricFamily("shapesearch_index_views", "rendered views in the search index")
        views.add_metric([], indexed * len(PoseGrid()))
        yield views


REGISTRY.register(StateCollector())


def metrics_response() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
