from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from shape_library.library import ShapeLibrary

from ..deps import library_dep
from ..schemas import ErrorOut, ShapeOut

router = APIRouter(prefix="/v1/shapes", tags=["shapes"])


@router.get("", response_model=list[ShapeOut], summary="All shapes of the library")
def list_shapes(
    category: str | None = Query(None, description="only shapes of this category"),
    library: ShapeLibrary = Depends(library_dep),
) -> list[ShapeOut]:
    return [ShapeOut(**s.as_dict()) for s in library.shapes(category)]


@router.get("/{shape_id}", response_model=ShapeOut, responses={404: {"model": ErrorOut}})
def get_shape(shape_id: int, library: ShapeLibrary = Depends(library_dep)) -> ShapeOut:
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
def get_mesh(shape_id: int, library: ShapeLibrary = Depends(library_dep)) -> Response:
    shape = library.get(shape_id)
    if shape is None:
        raise HTTPException(404, f"no shape with id {shape_id}")
    return Response(
        library.glb(shape_id),
        media_type="model/gltf-binary",
        headers={"Content-Disposition": f'attachment; filename="shape-{shape_id}.glb"'},
    )
