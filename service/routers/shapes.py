from __future__ import annotations

import io

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from shape_library import meshes
from shape_library.library import ShapeLibrary, atomic_write
from shape_library.meshes import MeshError
from shape_library.settings import get_settings

from ..deps import library_dep
from ..security import require_writer
from ..schemas import ErrorOut, ShapeId, ShapeOut
from ..uploads import read_upload

router = APIRouter(prefix="/v1/shapes", tags=["shapes"])


@router.get("", response_model=list[ShapeOut], summary="All shapes of the library")
def list_shapes(
    category: str | None = Query(None, description="only shapes of this category"),
    library: ShapeLibrary = Depends(library_dep),
) -> list[ShapeOut]:
    return [ShapeOut(**s.as_dict()) for s in library.shapes(category)]


@router.get("/{shape_id}", response_model=ShapeOut, responses={404: {"model": ErrorOut}})
def get_shape(shape_id: ShapeId, library: ShapeLibrary = Depends(library_dep)) -> ShapeOut:
    shape = library.get(shape_id)
    if shape is None:
        raise HTTPException(404, f"no shape with id {shape_id}")
    return ShapeOut(**shape.as_dict())


@router.get(
    "/{shape_id}/mesh",
    response_class=Response,
    responses={200: {"content": {"model/gltf-binary": {}}}, 404: {"model": ErrorOut}},
    summary="The normalised mesh (library frame) as binary glTF",
)
def get_mesh(shape_id: ShapeId, library: ShapeLibrary = Depends(library_dep)) -> Response:
    shape = library.get(shape_id)
    if shape is None:
        raise HTTPException(404, f"no shape with id {shape_id}")
    return Response(
        library.glb(shape_id),
        media_type="model/gltf-binary",
        headers={"Content-Disposition": f'attachment; filename="shape-{shape_id}.glb"'},
    )


class ShapeCreatedOut(ShapeOut):
    created: bool = Field(description="false when the same file was already in the library")
    job_id: str | None = Field(None, description="the indexing job (GET /v1/jobs/{job_id}); null when already indexed")


def _queue_index_job(shape_id: int, name: str) -> str:
    from worker import dispatch
    from worker.store import NewItem, open_store

    jobs = open_store(get_settings().jobs_url)
    job_id, _ = jobs.create("index", [NewItem(name=name, input=str(shape_id))], {"shape_ids": [shape_id]})
    dispatch.submit([(job_id, 0)])
    return job_id


@router.post("", response_model=ShapeCreatedOut, status_code=201,
             responses={200: {"model": ShapeCreatedOut}, 401: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
             summary="Add a mesh (glb/gltf/obj/ply/stl/off, or a zip holding one); its 2,541 views are indexed by a job")
async def add_shape(
    mesh: UploadFile | None = File(None, description="the mesh file; its type is taken from the file name"),
    name: str = Form(..., description="display name"),
    category: str = Form(..., description="e.g. car, aeroplane, boat"),
    library: ShapeLibrary = Depends(library_dep),
    _writer: str | None = Depends(require_writer),
) -> JSONResponse:
    settings = get_settings()
    data = await read_upload(mesh, settings.max_mesh_bytes, field="mesh")
    try:
        file_type = meshes.file_type_of(mesh.filename or "")
    except MeshError as exc:
        raise HTTPException(415, str(exc)) from None
    try:
        added = await run_in_threadpool(library.add, data, name=name, category=category, file_type=file_type,
                                        origin=f"upload:{mesh.filename}")
    except ValueError as exc:  # names and categories that are empty or too long
        raise HTTPException(422, str(exc)) from None
    shape = added.shape
    job_id = None
    if shape.index_status != "indexed":
        job_id = _queue_index_job(shape.id, shape.name)
    body = ShapeCreatedOut(**shape.as_dict(), created=added.created, job_id=job_id)
    return JSONResponse(body.model_dump(), status_code=201 if added.created else 200)


@router.delete("/{shape_id}", response_model=ShapeOut, responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}},
               summary="Remove a shape, its mesh and its views from the library and the index")
def remove_shape(shape_id: ShapeId, library: ShapeLibrary = Depends(library_dep),
                 _writer: str | None = Depends(require_writer)) -> ShapeOut:
    from shape_library import warm_engine
    from shape_library.bootstrap import view_index_from_settings

    shape = library.get(shape_id)
    if shape is None:
        raise HTTPException(404, f"no shape with id {shape_id}")
    out = ShapeOut(**shape.as_dict())
    with warm_engine.lock:
        library.remove(shape_id)
        view_index_from_settings(get_settings(), library).remove(shape_id)
        engine = warm_engine.get_engine()
        if engine is not None:
            engine.features.remove(shape_id)
    return out


@router.get("/{shape_id}/thumbnail.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}},
            summary="A grey rendering of the shape from the front-left, above")
def thumbnail(shape_id: ShapeId, size: int = Query(160, ge=32, le=512),
              library: ShapeLibrary = Depends(library_dep)) -> Response:
    shape = library.get(shape_id)
    if shape is None:
        raise HTTPException(404, f"no shape with id {shape_id}")
    path = get_settings().data_dir / "thumbnails" / f"{shape.mesh_sha256}-{size}-grey.png"
    if not path.is_file():
        from shape_library.render import Renderer, grey_on_white

        with Renderer(size) as renderer:
            res = renderer.render(library.mesh(shape_id), 35.0, 20.0, 0.0)
        buf = io.BytesIO()
        Image.fromarray(grey_on_white(res.shading, res.mask)).save(buf, "PNG", optimize=True)
        atomic_write(path, buf.getvalue())
    return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})
