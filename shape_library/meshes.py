"""Loading untrusted mesh files and normalising them into the library frame.

Library frame (contract): +z up, front facing -y, centred at the centre of the
axis-aligned bounding box, farthest vertex at distance 1.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import trimesh

MESH_FORMATS = ("glb", "gltf", "obj", "ply", "stl", "off")
ARCHIVE_FORMATS = ("zip",)   # one mesh file inside (OBJ with its MTL, glTF with its .bin buffers)
# An archive member whose expansion ratio exceeds this is treated as a zip bomb: real meshes
# compress about 2-10x, a bomb of zeros about 1,000x.
MAX_ZIP_RATIO = 200


class MeshError(ValueError):
    """A mesh that cannot enter the library; the message names the problem."""


def file_type_of(name: str) -> str:
    ext = Path(name).suffix.lower().lstrip(".")
    if ext not in MESH_FORMATS + ARCHIVE_FORMATS:
        raise MeshError(f"unsupported mesh format {ext!r}: expected one of {', '.join(MESH_FORMATS + ARCHIVE_FORMATS)}")
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
    if file_type in ARCHIVE_FORMATS:
        data = obj.getvalue() if isinstance(obj, io.BytesIO) else Path(obj).read_bytes()
        return _load_from_zip(data, max_faces)
    return _load(obj, file_type, max_faces)


def _load(obj, file_type: str, max_faces: int, resolver=None) -> trimesh.Trimesh:
    try:
        mesh = trimesh.load(obj, file_type=file_type, force="mesh", process=False, resolver=resolver)
    except Exception as exc:  # trimesh raises many types for broken files
        raise MeshError(f"unreadable {file_type} file: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"no triangle mesh in the {file_type} file (got {type(mesh).__name__})")
    return validate(mesh, max_faces)


class _SafeZip:
    """Members of an untrusted zip read with their names checked and their sizes bounded."""

    def __init__(self, data: bytes, max_member_bytes: int):
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise MeshError(f"unreadable zip archive: {exc}") from None
        self.max = max_member_bytes
        self.files = {}
        for info in infos:
            if info.is_dir():
                continue
            path = PurePosixPath(info.filename.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or info.filename.startswith(("/", "\\")) or ":" in path.parts[0]:
                raise MeshError(f"unsafe path in the archive: {info.filename!r}")
            self.files[str(path)] = info

    def read(self, name: str) -> bytes:
        info = self.files.get(str(PurePosixPath(name.replace("\\", "/"))))
        if info is None:
            raise MeshError(f"the archive has no member {name!r}")
        if info.file_size > self.max:
            raise MeshError(f"{info.filename}: {info.file_size} bytes unpacked, over the limit of {self.max}")
        if info.file_size > 1 << 20 and info.file_size > MAX_ZIP_RATIO * max(1, info.compress_size):
            raise MeshError(f"{info.filename}: expands {info.file_size // max(1, info.compress_size)}x (a zip bomb?)")
        out = bytearray()
        try:
            with self.zf.open(info) as f:       # the declared size may lie: count what comes out
                while chunk := f.read(1 << 20):
                    out += chunk
                    if len(out) > self.max:
                        raise MeshError(f"{info.filename}: more than {self.max} bytes unpacked")
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise MeshError(f"{info.filename}: unreadable member: {exc}") from None
        return bytes(out)


class _BufferResolver(trimesh.resolvers.Resolver):
    """trimesh resolver that hands a glTF its .bin buffers from the same archive, nothing else."""

    def __init__(self, archive: _SafeZip, folder: PurePosixPath):
        self.archive, self.folder = archive, folder

    def keys(self):
        return [n for n in self.archive.files if n.lower().endswith(".bin")]

    def write(self, name: str, data):
        raise MeshError("mesh archives are read-only")

    def namespaced(self, namespace: str):
        return _BufferResolver(self.archive, self.folder / namespace)

    def get(self, name: str) -> bytes:
        if not name.lower().endswith(".bin"):
            raise MeshError(f"the glTF refers to {name!r}; only .bin buffers are read from an archive")
        return self.archive.read(str(self.folder / name))


def _load_from_zip(data: bytes, max_faces: int, max_member_bytes: int = 128 * 2**20) -> trimesh.Trimesh:
    archive = _SafeZip(data, max_member_bytes)
    found = [n for n in archive.files if PurePosixPath(n).suffix.lower().lstrip(".") in MESH_FORMATS
             and not PurePosixPath(n).name.startswith(".")]
    if len(found) != 1:
        listed = ", ".join(sorted(found)[:5]) or "none"
        raise MeshError(f"a mesh archive must hold exactly one mesh file ({', '.join(MESH_FORMATS)}); found {len(found)}: {listed}")
    name = found[0]
    ext = PurePosixPath(name).suffix.lower().lstrip(".")
    resolver = _BufferResolver(archive, PurePosixPath(name).parent) if ext == "gltf" else None
    return _load(io.BytesIO(archive.read(name)), ext, max_faces, resolver)


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
