"""The view index: every shape rendered at every grid pose, stored per shape.

Per shape one compressed file holds, for each grid pose, the square crop box of
the silhouette (in canvas pixels) and the grey crop itself at the matching
network's input size.  Features of the rendering stream are computed from these
crops, so new weights need no re-rendering.  Files are keyed by a hash of
everything that changes their content (grid, canvas, crop, renderer version): a
changed key means the file is stale and gets rebuilt, other shapes stay.
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

from .catalog import IndexStatus
from .grid import DEFAULT_GRID, PoseGrid
from .library import ShapeLibrary, atomic_write

RENDERER_VERSION = "flat-normals-v1"
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
    renderings made on the fly match the indexed ones exactly.
    """
    from .render import crop_square, mask_box

    crops = np.full((len(poses), config.crop, config.crop), 255, np.uint8)
    boxes = np.zeros((len(poses), 4), np.float32)
    for v, (a, e, t) in enumerate(tqdm(poses, desc=desc, unit="view", disable=desc is None, leave=False)):
        res = renderer.render(mesh, float(a), float(e), float(t), config.distance)
        box = mask_box(res.mask)
        if box is not None:
            img, boxes[v] = crop_square(res.color[..., 0], box, config.crop, config.margin, fill=(255,))
            crops[v] = np.asarray(img)
    return crops, boxes


class ViewIndex:
    def __init__(self, root: Path, library: ShapeLibrary, config: ViewIndexConfig = ViewIndexConfig()):
        self.config = config
        self.root = Path(root) / config.key
        self.root.mkdir(parents=True, exist_ok=True)
        self.library = library

    def path(self, shape_id: int) -> Path:
        return self.root / f"shape-{shape_id}.npz"

    def has(self, shape_id: int) -> bool:
        return self.path(shape_id).is_file()

    def render_shape(self, shape_id: int, renderer=None, progress: bool = True) -> ShapeViews:
        from .render import Renderer

        poses = self.config.grid.poses().astype(np.float32)
        renderer = renderer or Renderer(self.config.canvas)
        crops, boxes = render_crops(renderer, self.library.mesh(shape_id), poses, self.config,
                                    desc=f"render shape {shape_id}" if progress else None)
        return ShapeViews(shape_id, poses, boxes, crops)

    def build(self, shape_id: int, renderer=None, progress: bool = True) -> ShapeViews:
        self.library.set_status(shape_id, IndexStatus.indexing)
        try:
            views = self.render_shape(shape_id, renderer, progress)
            self.save(views)
        except Exception:
            self.library.set_status(shape_id, IndexStatus.failed)
            raise
        self.library.set_status(shape_id, IndexStatus.indexed, self.config.key)
        return views

    def save(self, views: ShapeViews) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, poses=views.poses, boxes=views.boxes, crops=views.crops)
        data = buf.getvalue()
        atomic_write(self.path(views.shape_id), data)
        atomic_write(self.path(views.shape_id).with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())

    def load(self, shape_id: int) -> ShapeViews:
        """Read one shape's views; a file failing its checksum raises and is removed."""
        path = self.path(shape_id)
        data = path.read_bytes()
        digest = path.with_suffix(".sha256")
        if not digest.is_file() or digest.read_text().strip() != hashlib.sha256(data).hexdigest():
            path.unlink(missing_ok=True)
            digest.unlink(missing_ok=True)
            raise IOError(f"view index of shape {shape_id} is damaged; it will be rebuilt")
        with np.load(io.BytesIO(data)) as z:
            return ShapeViews(shape_id, z["poses"], z["boxes"], z["crops"])

    def remove(self, shape_id: int) -> None:
        self.path(shape_id).unlink(missing_ok=True)
        self.path(shape_id).with_suffix(".sha256").unlink(missing_ok=True)

    def sync(self, progress: bool = True, on_shape=None) -> list[int]:
        """Build what is missing or damaged, drop files of removed shapes; returns rebuilt ids."""
        from .render import Renderer

        shapes = self.library.shapes()
        ids = {s.id for s in shapes}
        for f in self.root.glob("shape-*.npz"):
            if int(f.stem.split("-")[1]) not in ids:
                self.remove(int(f.stem.split("-")[1]))
        todo = []
        for s in shapes:
            ok = self.has(s.id) and self.path(s.id).with_suffix(".sha256").is_file()
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
        if todo:
            with Renderer(self.config.canvas) as renderer:
                for sid in tqdm(todo, desc="index shapes", unit="shape", disable=not progress):
                    try:
                        self.build(sid, renderer, progress=progress)
                    except Exception as exc:  # one broken shape must not stop the others
                        log.error("indexing shape %s failed: %s", sid, exc)
                    done += 1
                    if on_shape:
                        on_shape(done, len(shapes))
        return todo
