"""The FastAPI application: one router per resource, versioned under /v1."""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.exceptions import RequestValidationError

from shape_library.meshes import MeshError

from .routers import health, search, shapes

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        from shape_library.settings import get_settings

        from .indexing import start_background_index

        if get_settings().index_on_start:
            start_background_index()
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="shapesearch",
        version="1.0",
        summary="Find the texture-free 3D shape and pose that match a photo.",
    )
    app.include_router(health.router)
    app.include_router(shapes.router)
    app.include_router(search.router)

    @app.exception_handler(MeshError)
    async def _mesh_error(_request, exc: MeshError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", []) if x != "body")
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index():
        page = WEB_DIR / "index.html"
        if page.is_file():
            return FileResponse(page)
        return JSONResponse({"detail": "web page not installed"}, status_code=404)

    return app


app = create_app()
