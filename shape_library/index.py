"""The view index: every shape rendered at every grid pose, stored per shape.

Per shape one compressed file holds, for each grid pose, the square crop box of
the silhouette (in canvas pixels) and the grey crop itself at the matching
network's input size.  Features of the rendering stream are computed from these
crops, so new weights need no re-rendering.  Files are keyed by a hash of
everything that changes their content (grid, canvas, crop, renderer version): a
changed key means the file is stale and gets rebuilt, other shapes stay.

Each file is written atomically (`shape_library.atomic`) and carries a SHA-256 of its arrays, its
shape id and its key: a truncated, altered or misplaced file is detected on load, logged, removed
and rendered again from the shape's mesh in the catalog. A folder that cannot be written (disk
full, read-only, no permission) raises `IndexWriteError` naming the folder and the cause, before
any rendering is spent, and leaves the files already there untouched.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .atomic import IndexWriteError, atomic_write, probe_writable, record_write_error, remove_quietly, remove_stale_temp_files
from .catalog import IndexStatus
from .grid import DEFAULT_GRID, PoseGrid
from .library import ShapeLibrary

RENDERER_VERSION = "flat-normals-v2-grey215"  # v2: object greys kept below the white background
FORMAT = 2  # 1: npz plus a .sha256 file beside it (still read); 2: the checksum inside the npz
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewIndexConfig:
    grid: PoseGrid = DEFAULT_GRID
    canvas: int = 128        # rendering canvas side, pixels
    crop: int = 64           # side of the stored crop (the rendering stream's input)
    margin: float = 0.08     # crop margin around the silhouette box, fraction of its side
    distance: float = 3.0    # camera distance, library units

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "grid": self.grid.key, "renderer": RENDERER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class ShapeViews:
    shape_id: int
    poses: np.ndarray   # (V, 3) float32 degrees
    boxes: np.ndarray   # (V, 4) float32 square crop boxes in canvas pixels
    crops: np.ndarray   # (V, crop, crop) uint8 grey renderings on white


def render_crops(renderer, mesh, poses: np.ndarray, config: ViewIndexConfig, desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grey square crops around the silhouette (what the rendering stream sees) and their canvas boxes.

    The one definition of a view, shared by the index, refinement and benchmarks, so
    renderings made on the fly match the indexed ones exactly.  Greys come from `grey_on_white`:
    with the renderer's clipped colour, faces turned to the key light were as white as the
    background and half the views lost over a fifth of their outline.
    """
    from .render import crop_square, grey_on_white, mask_box

    crops = np.full((len(poses), config.crop, config.crop), 255, np.uint8)
    boxes = np.zeros((len(poses), 4), np.float32)
    for v, (a, e, t) in enumerate(tqdm(poses, desc=desc, unit="view", disable=desc is None, leave=False)):
        res = renderer.render(mesh, float(a), float(e), float(t), config.distance)
        box = mask_box(res.mask)
        if box is not None:
            img, boxes[v] = crop_square(grey_on_white(res.shading, res.mask), box, config.crop, config.margin, fill=(255,))
            crops[v] = np.asarray(img)
    return crops, boxes


class DamagedIndexFile(IOError):
    """A stored index file failed its checks; it has been removed and will be rebuilt."""


def _digest(meta: bytes, arrays: dict[str, np.ndarray]) -> bytes:
    h = hashlib.sha256(meta)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.digest()


def encode_checked(meta: dict, arrays: dict[str, np.ndarray], compress: bool = True) -> bytes:
    """An npz holding the arrays, `meta` (JSON) and the SHA-256 of both."""
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    buf = io.BytesIO()
    save = np.savez_compressed if compress else np.savez
    save(buf, **arrays, meta=np.frombuffer(meta_bytes, np.uint8),
         sha256=np.frombuffer(_digest(meta_bytes, arrays), np.uint8))
    return buf.getvalue()


def decode_checked(data: bytes, names: tuple[str, ...], legacy_sha256: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a file made by `encode_checked`; ValueError naming what is wrong.

    A file of the first format (no checksum inside) is checked against `legacy_sha256`, the
    SHA-256 of the whole file kept beside it; without one it is refused."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            members = set(z.files)
            if "sha256" not in members:
                if legacy_sha256 is None or legacy_sha256 != hashlib.sha256(data).hexdigest():
                    raise ValueError("checksum missing or different (old format)")
                return {}, {n: z[n] for n in names}
            missing = [n for n in (*names, "meta") if n not in members]
            if missing:
                raise ValueError(f"no {', '.join(missing)} in the file")
            arrays = {n: z[n] for n in names}
            meta_bytes = z["meta"].tobytes()
            stored = z["sha256"].tobytes()
    except ValueError:
        raise
    except Exception as exc:  # truncated zip, bad CRC, bad zlib stream, bad header ...
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if stored != _digest(meta_bytes, arrays):
        raise ValueError("checksum mismatch")
    try:
        meta = json.loads(meta_bytes)
    except ValueError:
        raise ValueError("unreadable metadata") from None
    return meta, arrays


class ViewIndex:
    def __init__(self, root: Path, library: ShapeLibrary, config: ViewIndexConfig = ViewIndexConfig()):
        self.config = config
        self.root = Path(root) / config.key
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # reading what is there still works; writing says why it cannot
            log.error("%s", IndexWriteError("view index", self.root, exc))
        self.library = library

    def path(self, shape_id: int) -> Path:
        return self.root / f"shape-{shape_id}.npz"

    def has(self, shape_id: int) -> bool:
        return self.path(shape_id).is_file()

    def ensure_writable(self) -> None:
        """Raise IndexWriteError now, rather than after rendering, when the folder cannot take a file."""
        try:
            probe_writable(self.root)
        except OSError as exc:
            err = IndexWriteError("view index", self.root, exc)
            record_write_error(err)
            raise err from exc

    def render_shape(self, shape_id: int, renderer=None, progress: bool = True) -> ShapeViews:
        from .render import Renderer

        poses = self.config.grid.poses().astype(np.float32)
        renderer = renderer or Renderer(self.config.canvas)
        crops, boxes = render_crops(renderer, self.library.mesh(shape_id), poses, self.config,
                                    desc=f"render shape {shape_id}" if progress else None)
        return ShapeViews(shape_id, poses, boxes, crops)

    def _set_status(self, shape_id: int, status: IndexStatus, key: str | None = None, quiet: bool = False) -> None:
        try:
            self.library.set_status(shape_id, status, key)
        except Exception as exc:
            if not quiet:
                raise
            log.error("could not record shape %s as %s in the catalog: %s", shape_id, status.value, exc)

    def build(self, shape_id: int, renderer=None, progress: bool = True) -> ShapeViews:
        try:
            self.ensure_writable()
            self._set_status(shape_id, IndexStatus.indexing)
            views = self.render_shape(shape_id, renderer, progress)
            self.save(views)
        except Exception:
            self._set_status(shape_id, IndexStatus.failed, quiet=True)  # the original error is the one to see
            raise
        self._set_status(shape_id, IndexStatus.indexed, self.config.key)
        return views

    def encode(self, views: ShapeViews) -> bytes:
        return encode_checked({"format": FORMAT, "shape_id": int(views.shape_id), "key": self.config.key},
                              {"poses": views.poses, "boxes": views.boxes, "crops": views.crops})

    def save(self, views: ShapeViews) -> None:
        """Write one shape's file atomically; IndexWriteError (the old file intact) when it cannot."""
        path = self.path(views.shape_id)
        try:
            atomic_write(path, self.encode(views))
        except OSError as exc:
            err = IndexWriteError("view index", self.root, exc)
            record_write_error(err)
            log.error("shape %s: %s", views.shape_id, err)
            raise err from exc
        record_write_error(None)
        if path.with_suffix(".sha256").exists():  # the first format's checksum file
            remove_quietly(path.with_suffix(".sha256"))

    def check(self, shape_id: int, data: bytes) -> ShapeViews:
        """Decode and verify one file's bytes; ValueError naming what is wrong."""
        digest = self.path(shape_id).with_suffix(".sha256")
        legacy = digest.read_text().strip() if digest.is_file() else None
        meta, a = decode_checked(data, ("poses", "boxes", "crops"), legacy)
        if meta and (meta.get("shape_id") != shape_id or meta.get("key") != self.config.key):
            raise ValueError(f"it belongs to shape {meta.get('shape_id')} / index {meta.get('key')}")
        n, c = len(self.config.grid), self.config.crop
        if a["poses"].shape != (n, 3) or a["boxes"].shape != (n, 4) or a["crops"].shape != (n, c, c) or a["crops"].dtype != np.uint8:
            raise ValueError(f"arrays of the wrong shape {a['crops'].shape} for {n} views of {c}x{c}")
        if not np.allclose(a["poses"], self.config.grid.poses(), atol=1e-3):
            raise ValueError("poses differ from the grid")
        return ShapeViews(shape_id, a["poses"], a["boxes"], a["crops"])

    def load(self, shape_id: int, rebuild: bool = False) -> ShapeViews:
        """Read one shape's views, verified. A damaged file is logged, removed and marked for
        rebuilding; then `rebuild` renders it again from the mesh at once, else DamagedIndexFile."""
        path = self.path(shape_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if rebuild:
                return self._rebuild(shape_id)
            raise
        try:
            return self.check(shape_id, data)
        except ValueError as exc:
            reason = str(exc)
        log.warning("view index of shape %s is damaged (%s): removed; it is rendered again from the mesh", shape_id, reason)
        self.remove(shape_id)
        self._set_status(shape_id, IndexStatus.pending, quiet=True)
        if rebuild:
            return self._rebuild(shape_id)
        raise DamagedIndexFile(f"view index of shape {shape_id} is damaged ({reason}); it will be rebuilt")

    def _rebuild(self, shape_id: int) -> ShapeViews:
        try:
            return self.build(shape_id, progress=False)
        except IndexWriteError as exc:  # cannot store it: render it for this use only, say why
            log.error("shape %s is rendered in memory only: %s", shape_id, exc)
            return self.render_shape(shape_id, progress=False)

    def remove(self, shape_id: int) -> None:
        remove_quietly(self.path(shape_id), self.path(shape_id).with_suffix(".sha256"))

    def sync(self, progress: bool = True, on_shape=None, workers: int = 1) -> list[int]:
        """Build what is missing or damaged, drop files of removed shapes; returns rebuilt ids.

        `workers` > 1 renders shapes in that many processes (each with its own GL context; the
        files are the same); this process still writes every file and catalog row.
        Raises IndexWriteError, before rendering anything, when the folder cannot be written."""
        from .render import Renderer

        shapes = self.library.shapes()
        ids = {s.id for s in shapes}
        remove_stale_temp_files(self.root)
        for f in self.root.glob("shape-*.npz"):
            if int(f.stem.split("-")[1]) not in ids:
                self.remove(int(f.stem.split("-")[1]))
        todo = []
        for s in shapes:
            ok = self.has(s.id)
            if ok and s.index_status == IndexStatus.indexed.value and s.index_key == self.config.key:
                continue
            if ok:
                try:
                    self.load(s.id)
                    self.library.set_status(s.id, IndexStatus.indexed, self.config.key)
                    continue
                except IOError:
                    pass
            todo.append(s.id)
        done = len(shapes) - len(todo)
        if on_shape:
            on_shape(done, len(shapes))
        if todo and workers > 1 and len(todo) > 1:
            self.ensure_writable()
            for _ in self._build_in_processes(todo, workers, progress):
                done += 1
                if on_shape:
                    on_shape(done, len(shapes))
        elif todo:
            self.ensure_writable()
            with Renderer(self.config.canvas) as renderer:
                for sid in tqdm(todo, desc="index shapes", unit="shape", disable=not progress):
                    try:
                        self.build(sid, renderer, progress=progress)
                    except IndexWriteError:  # every other shape would fail the same way
                        raise
                    except Exception as exc:  # one broken shape must not stop the others
                        log.error("indexing shape %s failed: %s", sid, exc)
                    done += 1
                    if on_shape:
                        on_shape(done, len(shapes))
        return todo

    def _build_in_processes(self, todo: list[int], workers: int, progress: bool):
        """Yield after each shape of `todo` is rendered by a pool of `workers` processes and saved here."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        poses = self.config.grid.poses().astype(np.float32)
        # spawn: a forked child would inherit this process's GL state
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context("spawn")) as pool:
            jobs = {}
            for sid in todo:
                self._set_status(sid, IndexStatus.indexing)
                jobs[pool.submit(_render_in_worker, self.library.mesh(sid), poses, self.config)] = sid
            for job in tqdm(as_completed(jobs), total=len(jobs), desc="index shapes", unit="shape", disable=not progress):
                sid = jobs[job]
                try:
                    crops, boxes = job.result()
                    self.save(ShapeViews(sid, poses, boxes, crops))
                except IndexWriteError:
                    raise
                except Exception as exc:  # one broken shape must not stop the others
                    self._set_status(sid, IndexStatus.failed, quiet=True)
                    log.error("indexing shape %s failed: %s", sid, exc)
                else:
                    self._set_status(sid, IndexStatus.indexed, self.config.key)
                yield sid


_worker_renderer = None


def _render_in_worker(mesh, poses: np.ndarray, config: ViewIndexConfig) -> tuple[np.ndarray, np.ndarray]:
    """One shape's views in a pool process, which keeps its renderer between shapes."""
    global _worker_renderer
    from .render import Renderer

    if _worker_renderer is None:
        _worker_renderer = Renderer(config.canvas)
    return render_crops(_worker_renderer, mesh, poses, config)
