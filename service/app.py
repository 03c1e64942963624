"""The FastAPI application: one router per resource, versioned under /v1."""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.exceptions import RequestValidationError

from shape_library.images import InputRejected
from shape_library.meshes import MeshError

from .metrics import MetricsMiddleware, metrics_response
from .routers import health, hierarchy, jobs, normals, rotation, search, shapes, tags, viewpoint

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        from shape_library.settings import get_settings

        from worker import dispatch

        from .indexing import start_background_index

        if get_settings().index_on_start:
            start_background_index()
        dispatch.start()  # resumes the unfinished items of open jobs
        yield
        dispatch.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="shapesearch",
        version="1.0",
        summary="Find the texture-free 3D shape and pose that match a photo.",
    )
    app.include_router(health.router)
    app.include_router(shapes.router)
    app.include_router(search.router)
    app.include_router(jobs.router)
    app.include_router(viewpoint.router)
    app.include_router(rotation.router)
    app.include_router(normals.router)
    app.include_router(tags.router)
    app.include_router(hierarchy.router)
    from shape_library.settings import get_settings

    from .security import RateLimitMiddleware

    settings = get_settings()
    if settings.rate_limit_per_minute > 0:
        app.add_middleware(RateLimitMiddleware, per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["X-API-Key", "Authorization", "Idempotency-Key", "Content-Type"])
    app.add_middleware(MetricsMiddleware)  # outermost: counts the 429s too

    @app.get("/metrics", include_in_schema=True, tags=["health"], summary="Prometheus metrics")
    def metrics():
        return metrics_response()

    @app.exception_handler(MeshError)
    async def _mesh_error(_request, exc: MeshError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(InputRejected)
    async def _input_rejected(_request, exc: InputRejected):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", []) if x != "body")
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        page = WEB_DIR / "index.html"
        if page.is_file():
            return FileResponse(page)
        return JSONResponse({"detail": "web page not installed"}, status_code=404)

    return app


app = create_app()
