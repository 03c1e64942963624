"""Loading untrusted mesh files and normalising them into the library frame.

Library frame (contract): +z up, front facing -y, centred at the centre of the
axis-aligned bounding box, farthest vertex at distance 1.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import trimesh

MESH_FORMATS = ("glb", "gltf", "obj", "ply", "stl", "off")


class MeshError(ValueError):
    """A mesh that cannot enter the library; the message names the problem."""


def file_type_of(name: str) -> str:
    ext = Path(name).suffix.lower().lstrip(".")
    if ext not in MESH_FORMATS:
        raise MeshError(f"unsupported mesh format {ext!r}: expected one of {', '.join(MESH_FORMATS)}")
    return ext


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_mesh(source: Path | bytes, file_type: str | None = None, max_faces: int = 500_000) -> trimesh.Trimesh:
    """Read one file as a single triangle mesh (a scene is flattened with its node transforms).

    Raises MeshError for unreadable files, empty meshes, non-finite vertices or too
    many faces; removes degenerate faces and unreferenced vertices.
    """
    if isinstance(source, (bytes, bytearray)):
        if file_type is None:
            raise MeshError("file type needed to read mesh bytes")
        file_type = file_type_of("x." + file_type)
        if len(source) == 0:
            raise MeshError("empty mesh file")
        obj = io.BytesIO(source)
    else:
        source = Path(source)
        file_type = file_type_of(file_type and "x." + file_type or source.name)
        if not source.is_file():
            raise MeshError(f"mesh file not found: {source.name}")
        if source.stat().st_size == 0:
            raise MeshError("empty mesh file")
        obj = str(source)
    try:
        mesh = trimesh.load(obj, file_type=file_type, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for broken files
        raise MeshError(f"unreadable {file_type} file: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"no triangle mesh in the {file_type} file (got {type(mesh).__name__})")
    return validate(mesh, max_faces)


def validate(mesh: trimesh.Trimesh, max_faces: int = 500_000) -> trimesh.Trimesh:
    faces = np.asarray(mesh.faces)
    vertices = np.asarray(mesh.vertices)
    if faces.size == 0 or vertices.size == 0:
        raise MeshError("mesh has no faces")
    if len(faces) > max_faces:
        raise MeshError(f"mesh has {len(faces)} faces, over the limit of {max_faces}")
    if not np.all(np.isfinite(vertices)):
        raise MeshError("mesh has NaN or infinite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError("mesh faces index vertices that do not exist")
    mesh = trimesh.Trimesh(vertices=vertices.astype(np.float64), faces=faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise MeshError("mesh has only degenerate faces (zero area)")
    if float(np.ptp(mesh.vertices, axis=0).max()) <= 0:
        raise MeshError("mesh has zero extent")
    return mesh


def normalise(mesh: trimesh.Trimesh, rotation: np.ndarray | None = None) -> trimesh.Trimesh:
    """Rotate into the library frame, centre the bounding box, scale the farthest vertex to 1."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    if rotation is not None:
        R = np.asarray(rotation, dtype=np.float64)
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
            raise MeshError("to_library_rotation must be a proper 3x3 rotation matrix")
        v = v @ R.T
    lo, hi = v.min(axis=0), v.max(axis=0)
    v = v - (lo + hi) / 2.0
    radius = np.linalg.norm(v, axis=1).max()
    if not np.isfinite(radius) or radius <= 0:
        raise MeshError("mesh has zero extent")
    return trimesh.Trimesh(vertices=v / radius, faces=np.asarray(mesh.faces), process=False)


def to_glb(mesh: trimesh.Trimesh) -> bytes:
    """Binary glTF of the mesh exactly as stored (library frame, normalised)."""
    return trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=False)
