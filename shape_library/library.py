"""The shape library: catalog rows plus normalised meshes on disk."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import trimesh

from . import meshes
from .catalog import Catalog, IndexStatus, Shape
from .meshes import MeshError


@dataclass(frozen=True)
class AddResult:
    shape: Shape
    created: bool  # False when the same source file was already in the library


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShapeLibrary:
    def __init__(self, data_dir: Path, max_faces: int = 500_000):
        self.data_dir = Path(data_dir)
        self.meshes_dir = self.data_dir / "meshes"
        self.meshes_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(self.data_dir / "catalog.sqlite")
        self.max_faces = max_faces
        self._mesh_cache: dict[int, trimesh.Trimesh] = {}

    # Adding -----------------------------------------------------------------
    def add(
        self,
        source: Path | bytes,
        *,
        name: str,
        category: str,
        file_type: str | None = None,
        subtype: str = "",
        rotation: np.ndarray | None = None,
        license: str = "",
        attribution: str = "",
        origin: str = "",
    ) -> AddResult:
        """Validate, normalise and store one mesh; the same source file is stored once."""
        name, category = _clean_label(name, "name"), _clean_label(category, "category")
        data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
        sha = meshes.sha256_bytes(bytes(data))
        existing = self.catalog.by_source_hash(sha)
        if existing is not None:
            return AddResult(existing, False)
        if file_type is None and not isinstance(source, (bytes, bytearray)):
            file_type = meshes.file_type_of(Path(source).name)
        raw = meshes.load_mesh(
            bytes(data) if isinstance(source, (bytes, bytearray)) else Path(source), file_type, self.max_faces
        )
        mesh = meshes.normalise(raw, rotation)
        mesh_sha = meshes.sha256_bytes(mesh.vertices.astype(np.float32).tobytes() + mesh.faces.astype(np.int32).tobytes())
        mesh_file = f"{mesh_sha}.npz"
        self._save_mesh(self.meshes_dir / mesh_file, mesh)
        shape = self.catalog.add(
            name=name,
            category=category,
            subtype=subtype,
            license=license,
            attribution=attribution,
            source=origin or (str(source) if not isinstance(source, (bytes, bytearray)) else "upload"),
            source_sha256=sha,
            mesh_sha256=mesh_sha,
            mesh_file=mesh_file,
            vertices=len(mesh.vertices),
            faces=len(mesh.faces),
        )
        return AddResult(shape, True)

    @staticmethod
    def _save_mesh(path: Path, mesh: trimesh.Trimesh) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, vertices=mesh.vertices.astype(np.float32), faces=mesh.faces.astype(np.int32))
        atomic_write(path, buf.getvalue())

    # Reading ----------------------------------------------------------------
    def shapes(self, category: str | None = None) -> list[Shape]:
        return self.catalog.list(category)

    def get(self, shape_id: int) -> Shape | None:
        return self.catalog.get(shape_id)

    def mesh(self, shape_id: int) -> trimesh.Trimesh:
        if shape_id not in self._mesh_cache:
            shape = self.catalog.get(shape_id)
            if shape is None:
                raise KeyError(shape_id)
            self._mesh_cache[shape_id] = _load_npz(self.meshes_dir / shape.mesh_file)
        return self._mesh_cache[shape_id]

    def glb(self, shape_id: int) -> bytes:
        return meshes.to_glb(self.mesh(shape_id))

    def set_status(self, shape_id: int, status: IndexStatus, index_key: str | None = None) -> None:
        self.catalog.set_status(shape_id, status, index_key)

    def remove(self, shape_id: int) -> Shape | None:
        shape = self.catalog.remove(shape_id)
        self._mesh_cache.pop(shape_id, None)
        if shape is not None and not any(s.mesh_file == shape.mesh_file for s in self.catalog.list()):
            (self.meshes_dir / shape.mesh_file).unlink(missing_ok=True)
        return shape


def _load_npz(path: Path) -> trimesh.Trimesh:
    with np.load(path) as z:
        return trimesh.Trimesh(vertices=z["vertices"].astype(np.float64), faces=z["faces"], process=False)


def _clean_label(value: str, what: str) -> str:
    value = (value or "").strip()
    if not value:
        raise MeshError(f"{what} must not be empty")
    if len(value) > 200 or any(ord(c) < 32 for c in value):
        raise MeshError(f"{what} must be at most 200 printable characters")
    return value


@lru_cache(maxsize=None)
def open_library(data_dir: str, max_faces: int = 500_000) -> ShapeLibrary:
    return ShapeLibrary(Path(data_dir), max_faces)
