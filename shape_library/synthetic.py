"""Synthetic photos: library shapes rendered to look like photographs, with exact labels.

No annotated real photos exist here, so every model (the render-vs-photo matching
network, the viewpoint regressors, the taggers) learns from these.  One generator,
shared by all of them:

* **Pose**: continuous, azimuth uniform in [0, 360), elevation uniform in a range,
  in-plane theta ~ N(0, sigma) clipped, distance uniform in a range; the object is
  shifted in the frame by moving the principal point (a crop of a larger photo),
  so the contract's camera and `camera.project` stay exact.
* **Appearance**: random albedo (uniform colour, two tones split by a plane in the
  library frame, or 3D value-noise textures evaluated at the library-frame surface
  point of each pixel, X = R^T p_cam + C, so patterns stick to the surface), 1-3
  random directional lights in the camera frame plus a sky/ground ambient term,
  optional Blinn-Phong highlights; rendered at `supersample` x resolution and box
  filtered, so silhouettes are anti-aliased.
* **Background**: multi-octave value noise, gradients, random shapes, a near-plain
  studio colour, random crops of image files (`backgrounds` folder) and clutter of
  other library shapes behind the object.
* **Degradations**: occluders (random polygons / bars textured like backgrounds),
  colour jitter, vignetting, low resolution, Gaussian blur, sensor noise, JPEG.

Every sample is drawn from its own ``numpy`` generator seeded with ``(seed, index)``:
the same seed gives the same pixels, and sample i does not depend on how many
samples are asked for or in which order.

Labels of a :class:`Sample` (all in canvas pixels of the returned image):

* ``mask``: the object's silhouette (anti-aliasing coverage >= 0.5), occluders ignored;
* ``visible_mask``: ``mask`` minus the occluder;
* ``box``: tight (x0, y0, x1, y1) box of ``visible_mask``, exclusive max, floats;
* ``full_box``: box of the projected mesh vertices (may reach outside the canvas);
* ``depth`` / ``normals``: of the object surface under ``mask`` (0 elsewhere), depth
  along the viewing axis, unit normals in the contract's camera frame facing the
  viewer (n_z > 0);
* ``pose``: (azimuth, elevation, theta, distance), degrees and library units;
* ``intrinsics``: the pinhole camera of the image (principal point shifted).

Splits: :func:`split_shapes` holds out a fraction of the shapes of every category
(deterministic, by a seeded hash of each shape's mesh checksum, so adding shapes
barely moves others); :class:`PoseHoldout` holds out pose cells (a seeded hash of the
contract grid's azimuth x elevation bin, or a band of azimuths) and
``SyntheticConfig.pose_subset`` draws poses from one side only.
"""
from __future__ import annotations

import colorsys
import io
import math
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import camera as cam
from .camera import Intrinsics
from .grid import DEFAULT_GRID, PoseGrid
from .render import mask_box, pixel_rays

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PoseHoldout:
    """Which poses are held out (for experiments on unseen viewpoints).

    mode "bin": a pose is held out when a seeded hash of its contract-grid
    (azimuth bin, elevation bin) falls below `fraction` (theta and distance are
    ignored, so a held-out cell is unseen at every in-plane rotation).
    mode "azimuth": azimuths in [band_start, band_start + 360 * fraction) are held out.
    """

    fraction: float = 0.2
    seed: int = 0
    mode: str = "bin"
    band_start: float = 0.0
    grid: PoseGrid = DEFAULT_GRID

    def is_heldout(self, azimuth: float, elevation: float, theta: float = 0.0) -> bool:
        if self.mode == "azimuth":
            return ((azimuth - self.band_start) % 360.0) < 360.0 * self.fraction
        if self.mode != "bin":
            raise ValueError(f"unknown pose hold-out mode {self.mode!r}")
        idx = int(self.grid.nearest_index(azimuth, elevation, 0.0)) // self.grid.n_theta  # (i, j) cell
        return _unit_hash(self.seed, "pose", idx) < self.fraction

    def split(self, azimuth: float, elevation: float, theta: float = 0.0) -> str:
        return "heldout" if self.is_heldout(azimuth, elevation, theta) else "train"


@dataclass
class SyntheticConfig:
    # Canvas and camera.
    width: int = 160
    height: int = 160
    supersample: int = 2                    # render at this factor, box-filter down (anti-aliasing)
    fit_distance: float | None = None       # focal length fits the unit sphere at this distance (default: min distance)
    focal_range: tuple[float, float] = (0.95, 1.1)   # multiplies that focal length
    # Pose distribution (degrees, library units).
    azimuth_range: tuple[float, float] = (0.0, 360.0)
    elevation_range: tuple[float, float] = (-20.0, 60.0)
    theta_std: float = 10.0
    theta_max: float = 30.0
    distance_range: tuple[float, float] = (2.2, 4.0)
    pose_subset: str | None = None           # None, "train" or "heldout" (see `pose_holdout`)
    # Shape jitter: each photo stretches the mesh along its own x, y, z by independent factors drawn
    # log-uniformly from this range (then re-fits it in the unit sphere).  Axis-aligned, so the pose
    # label is unchanged; a training set of a few dozen meshes then shows many more proportions.
    shape_scale: tuple[float, float] | None = None
    pose_holdout: PoseHoldout = field(default_factory=PoseHoldout)
    # Placement: the object stays inside the canvas with `margin` pixels, except with
    # probability p_truncate, when up to `max_truncation` of its box may leave it.
    margin: float = 2.0
    p_truncate: float = 0.15
    max_truncation: float = 0.25
    balance_categories: bool = False         # draw a category uniformly first, then a shape
    # Appearance (probabilities of the albedo modes are relative weights).
    albedo_weights: dict = field(default_factory=lambda: {"uniform": 0.35, "two_tone": 0.25, "texture": 0.4})
    p_specular: float = 0.5
    p_dirt: float = 0.4                      # subtle surface-noise modulation of any albedo
    p_shadow: float = 0.25                   # soft shadow on a ground under the object
    # Background.
    background_weights: dict = field(
        default_factory=lambda: {"noise": 0.25, "gradient": 0.2, "shapes": 0.2, "plain": 0.1, "photo": 0.25}
    )
    backgrounds: str | Path | None = None    # folder of image files (any layout), for "photo" backgrounds
    p_clutter: float = 0.35
    clutter_count: tuple[int, int] = (1, 3)
    clutter_scale: tuple[float, float] = (0.3, 0.9)   # sprite size / the object's projected size
    clutter_bank: int = 96                   # distinct clutter renderings per generator (recoloured per use)
    # Occlusion.
    p_occlusion: float = 0.25
    min_visible: float = 0.4                 # of the silhouette's pixels
    # Degradations.
    p_color_jitter: float = 0.8
    p_vignette: float = 0.2
    p_lowres: float = 0.15
    lowres_range: tuple[float, float] = (0.4, 0.8)
    p_blur: float = 0.4
    blur_sigma: tuple[float, float] = (0.3, 1.3)
    p_noise: float = 0.6
    noise_sigma: tuple[float, float] = (1.0, 8.0)     # out of 255
    p_jpeg: float = 0.7
    jpeg_quality: tuple[int, int] = (30, 95)

    @classmethod
    def clean(cls, **kw) -> "SyntheticConfig":
        """White background, uniform colours, no occluder/clutter/degradation: for checks."""
        base = dict(
            background_weights={"plain_white": 1.0}, albedo_weights={"uniform": 1.0}, p_specular=0.0, p_dirt=0.0,
            p_shadow=0.0, p_clutter=0.0, p_occlusion=0.0, p_color_jitter=0.0, p_vignette=0.0, p_lowres=0.0,
            p_blur=0.0, p_noise=0.0, p_jpeg=0.0, p_truncate=0.0,
        )
        base.update(kw)
        return cls(**base)

    def with_size(self, width: int, height: int | None = None) -> "SyntheticConfig":
        return replace(self, width=int(width), height=int(height or width))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backgrounds"] = None if self.backgrounds is None else str(self.backgrounds)
        d["pose_holdout"]["grid"] = self.pose_holdout.grid.key
        return d


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    image: np.ndarray                  # (H, W, 3) uint8 RGB
    shape_id: int
    category: str
    name: str
    pose: tuple[float, float, float, float]   # azimuth, elevation, theta (degrees), distance
    box: tuple[float, float, float, float] | None   # visible silhouette box, exclusive max
    full_box: tuple[float, float, float, float]     # projected mesh box, may extend past the canvas
    mask: np.ndarray                   # (H, W) bool silhouette, occluders ignored
    visible_mask: np.ndarray           # (H, W) bool silhouette minus occluder
    depth: np.ndarray                  # (H, W) float32, 0 off the object
    normals: np.ndarray                # (H, W, 3) float32 camera frame, facing the viewer
    intrinsics: Intrinsics
    index: int = 0
    seed: int = 0
    occluded_fraction: float = 0.0
    truncated: bool = False
    meta: dict = field(default_factory=dict)   # what was drawn: background kind, albedo, lights, ...

    @property
    def azimuth(self) -> float:
        return self.pose[0]

    @property
    def elevation(self) -> float:
        return self.pose[1]

    @property
    def theta(self) -> float:
        return self.pose[2]

    @property
    def distance(self) -> float:
        return self.pose[3]

    @property
    def rotation(self) -> np.ndarray:
        """R(a, e, theta) of the contract, library -> camera frame."""
        return cam.rotation(*self.pose[:3])

    def record(self) -> dict:
        """JSON-serialisable labels (what a manifest line holds, without the file)."""
        K = self.intrinsics
        return {
            "index": self.index, "seed": self.seed, "shape_id": self.shape_id, "shape": self.name,
            "category": self.category,
            "pose": dict(zip(("azimuth", "elevation", "theta", "distance"), (round(float(x), 4) for x in self.pose))),
            "box": None if self.box is None else [round(float(x), 2) for x in self.box],
            "full_box": [round(float(x), 2) for x in self.full_box],
            "occluded_fraction": round(float(self.occluded_fraction), 4), "truncated": bool(self.truncated),
            "width": K.width, "height": K.height,
            "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx, "cy": K.cy},
        }


# --------------------------------------------------------------------------- small helpers


def _unit_hash(*parts) -> float:
    """A deterministic number in [0, 1) from its arguments (Python's hash() is salted)."""
    h = zlib.crc32(repr(parts).encode())
    h = zlib.crc32(repr((h, parts)).encode(), h)  # a second round mixes short inputs better
    return h / 2.0**32


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF])


def _choice(rng: np.random.Generator, weights: dict) -> str:
    keys = [k for k, w in weights.items() if w > 0]
    if not keys:
        raise ValueError("no positive weight")
    w = np.array([weights[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def random_colour(rng: np.random.Generator, p_neutral: float = 0.25) -> np.ndarray:
    """An RGB colour in [0, 1]: greys/black/white sometimes, else saturated or muted hues."""
    if rng.random() < p_neutral:
        v = rng.choice([rng.uniform(0.05, 0.2), rng.uniform(0.3, 0.7), rng.uniform(0.8, 0.97)])
        tint = rng.uniform(-0.03, 0.03, 3)
        return np.clip(v + tint, 0, 1)
    h, s, v = rng.random(), rng.uniform(0.2, 0.95), rng.uniform(0.25, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def value_noise_2d(rng: np.random.Generator, height: int, width: int, octaves: int = 4, cells: float = 3.0,
                   persistence: float = 0.5) -> np.ndarray:
    """Multi-octave value noise in [0, 1], (H, W) float32 (bicubic upsampling of random lattices)."""
    out = np.zeros((height, width), np.float32)
    amp, total = 1.0, 0.0
    aspect = width / height
    for o in range(octaves):
        c = cells * 2**o
        gh, gw = max(2, int(math.ceil(c)) + 1), max(2, int(math.ceil(c * aspect)) + 1)
        lattice = rng.random((gh, gw)).astype(np.float32)
        up = Image.fromarray(lattice, "F").resize((width, height), Image.Resampling.BICUBIC)
        out += amp * np.asarray(up, np.float32)
        total += amp
        amp *= persistence
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def value_noise_3d(rng: np.random.Generator, points: np.ndarray, octaves: int = 3, frequency: float = 2.0,
                   persistence: float = 0.5, lattice: int = 16) -> np.ndarray:
    """Multi-octave 3D value noise at (N, 3) points, in [0, 1] (trilinear with smoothstep)."""
    # A random rotation and offset, so patterns are not aligned with the library axes.
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    p = points @ q.astype(np.float32)
    out = np.zeros(len(points), np.float32)
    amp, total, freq = 1.0, 0.0, frequency
    L = lattice
    for _ in range(octaves):
        grid = rng.random((L, L, L)).astype(np.float32)
        x = p * freq + rng.uniform(0, L, 3).astype(np.float32)
        i0 = np.floor(x)
        f = _smooth(x - i0)
        i0 = i0.astype(np.int64) % L
        i1 = (i0 + 1) % L
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        x0, y0, z0 = i0[:, 0], i0[:, 1], i0[:, 2]
        x1, y1, z1 = i1[:, 0], i1[:, 1], i1[:, 2]
        c00 = grid[x0, y0, z0] * (1 - fx) + grid[x1, y0, z0] * fx
        c10 = grid[x0, y1, z0] * (1 - fx) + grid[x1, y1, z0] * fx
        c01 = grid[x0, y0, z1] * (1 - fx) + grid[x1, y0, z1] * fx
        c11 = grid[x0, y1, z1] * (1 - fx) + grid[x1, y1, z1] * fx
        c0 = c00 * (1 - fy) + c10 * fy
        c1 = c01 * (1 - fy) + c11 * fy
        out += amp * (c0 * (1 - fz) + c1 * fz)
        total += amp
        amp *= persistence
        freq *= 2.0
    return out / total


def surface_points(depth: np.ndarray, K: Intrinsics, pose: Sequence[float]) -> np.ndarray:
    """(H, W, 3) library-frame surface points X = R^T p_cam + C (meaningless where depth == 0)."""
    a, e, t, d = pose[:4]
    R = cam.rotation(a, e, t).astype(np.float32)
    C = cam.center(a, e, d).astype(np.float32)
    p_cam = pixel_rays(K) * depth[..., None]
    return p_cam @ R + C  # (R^T p)^T = p^T R


def box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight (x0, y0, x1, y1) box of a mask, exclusive max, as floats; None when empty."""
    box = mask_box(mask)
    return None if box is None else tuple(float(v) for v in box)


def _downsample(a: np.ndarray, s: int) -> np.ndarray:
    """Sum over s x s blocks of the first two axes."""
    out = a[0::s, 0::s].astype(np.float32)
    for i in range(s):
        for j in range(s):
            if i or j:
                out += a[i::s, j::s]
    return out


def _tonemap(x: np.ndarray, knee: float = 0.8) -> np.ndarray:
    """Identity below `knee`, then a soft shoulder towards 1 (highlights keep some gradation)."""
    over = np.maximum(x - knee, 0.0)
    return np.clip(np.minimum(x, knee) + (1.0 - knee) * (1.0 - np.exp(-over / (1.0 - knee))), 0.0, 1.0)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _from_image(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32) / 255.0


# --------------------------------------------------------------------------- shape splits


def _shape_key(s) -> tuple[int, str, str]:
    if isinstance(s, (int, np.integer)):
        return int(s), "", str(int(s))
    sid = int(getattr(s, "id"))
    return sid, str(getattr(s, "category", "")), str(getattr(s, "mesh_sha256", "") or getattr(s, "name", "") or sid)


def split_shapes(shapes: Iterable, held_out_fraction: float = 0.2, seed: int = 0, library=None) -> tuple[list[int], list[int]]:
    """(train_ids, heldout_ids), stratified per category, deterministic.

    `shapes`: catalog `Shape`s, or shape ids (categories then come from `library`,
    else all ids form one stratum).  In every category the shapes are ranked by a
    seeded hash of their mesh checksum (falling back to name / id) and the first
    round(fraction * n) are held out: at least one when the category has two or
    more shapes and the fraction is > 0, never all of them.
    """
    items = []
    for s in shapes:
        if isinstance(s, (int, np.integer)) and library is not None:
            s = library.get(int(s)) or int(s)
        items.append(_shape_key(s))
    by_cat: dict[str, list[tuple[int, str]]] = {}
    for sid, cat, key in items:
        by_cat.setdefault(cat, []).append((sid, key))
    train, held = [], []
    for cat in sorted(by_cat):
        members = sorted(set(by_cat[cat]), key=lambda m: (_unit_hash(seed, cat, m[1]), m[0]))
        n = len(members)
        k = int(round(held_out_fraction * n))
        if held_out_fraction > 0 and n >= 2:
            k = max(k, 1)
        k = min(k, n - 1) if n >= 2 else (1 if held_out_fraction >= 1 else 0)
        held += [m[0] for m in members[:k]]
        train += [m[0] for m in members[k:]]
    return sorted(train), sorted(held)


def pose_split(azimuth: float, elevation: float, theta: float = 0.0, holdout: PoseHoldout = PoseHoldout()) -> str:
    """'train' or 'heldout' for a pose (see PoseHoldout)."""
    return holdout.split(azimuth, elevation, theta)


# --------------------------------------------------------------------------- background images


class _PhotoPool:
    """Image files of a folder, decoded lazily (a few cached), for random background crops."""

    def __init__(self, folder: str | Path | None, max_side: int = 1024, cache: int = 16):
        self.files: list[Path] = []
        if folder is not None:
            folder = Path(folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"background folder not found: {folder}")
            self.files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        self.max_side, self.cache_size = max_side, cache
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int) -> Image.Image | None:
        if i in self._bad:
            return None
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                im.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
                im.load()
        except Exception:  # an unreadable file is skipped, not fatal
            self._bad.add(i)
            return None
        self._cache[i] = im
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return im

    def crop(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray | None:
        if not self.files:
            return None
        im = self.get(int(rng.integers(len(self.files))))
        if im is None:
            return None
        W, H = im.size
        aspect = width / height
        side = rng.uniform(0.25, 1.0)
        cw = min(W, H * aspect) * side
        ch = cw / aspect
        x0, y0 = rng.uniform(0, W - cw), rng.uniform(0, H - ch)
        out = im.transform((width, height), Image.Transform.EXTENT, (x0, y0, x0 + cw, y0 + ch), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _from_image(out)


# --------------------------------------------------------------------------- the generator


@dataclass
class _Sprite:
    normals: np.ndarray   # (h, w, 3) float32
    alpha: np.ndarray     # (h, w) float32 coverage
    shape_id: int


def paste_rgba(img: np.ndarray, rgba: np.ndarray, x0: int, y0: int) -> tuple[slice, slice, np.ndarray] | None:
    """Alpha-blend a float RGBA patch (values in [0, 1]) into a float RGB image at (x0, y0), clipped
    to the image; returns the rows, columns and alpha of the pasted part (None when fully outside)."""
    H, W = img.shape[:2]
    h, w = rgba.shape[:2]
    ax0, ay0, ax1, ay1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if ax1 <= ax0 or ay1 <= ay0:
        return None
    part = rgba[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0]
    a = part[..., 3:4]
    rows, cols = slice(ay0, ay1), slice(ax0, ax1)
    img[rows, cols] = img[rows, cols] * (1 - a) + part[..., :3] * a
    return rows, cols, a[..., 0]


class SyntheticGenerator:
    """Makes samples of `shape_ids` (all library shapes when None); reuse it for many samples.

    One renderer (passed in or created once) draws the objects; a second scene on
    the same GL context draws the clutter bank.  ``sample(i)`` is a pure function
    of (seed, i, shape_ids, config).
    """

    def __init__(self, library, shape_ids: Sequence[int] | None = None, seed: int = 0,
                 config: SyntheticConfig | None = None, renderer=None):
        from .render import Renderer

        self.library = library
        self.config = config or SyntheticConfig()
        self.seed = int(seed)
        shapes = {s.id: s for s in library.shapes()}
        ids = [s for s in shapes] if shape_ids is None else [int(s) for s in shape_ids]
        missing = [s for s in ids if s not in shapes]
        if missing:
            raise KeyError(f"shape ids not in the library: {missing[:10]}")
        if not ids:
            raise ValueError("no shapes to render")
        self.shape_ids = ids
        self.shapes = {i: shapes[i] for i in ids}
        self._by_category: dict[str, list[int]] = {}
        for i in ids:
            self._by_category.setdefault(self.shapes[i].category, []).append(i)
        self._categories = sorted(self._by_category)
        cfg = self.config
        self.renderer = renderer or Renderer(cfg.width * cfg.supersample, cfg.height * cfg.supersample)
        self._clutter_renderer = Renderer(cfg.width * cfg.supersample, cfg.height * cfg.supersample)
        self._photos = _PhotoPool(cfg.backgrounds)
        self._sprites: dict[int, _Sprite | None] = {}
        self._base_focal = Intrinsics.fitting_unit_sphere(
            cfg.width, cfg.height, cfg.fit_distance or cfg.distance_range[0]
        ).fx

    # -- public ---------------------------------------------------------------
    def close(self) -> None:
        self._clutter_renderer.close()

    def __enter__(self) -> "SyntheticGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sample(self, index: int) -> Sample:
        rng = sample_rng(self.seed, index)
        shape_id = self._pick_shape(rng)
        s = self.make(shape_id, rng)
        s.index, s.seed = int(index), self.seed
        return s

    def samples(self, n: int, start: int = 0) -> Iterator[Sample]:
        for i in range(start, start + n):
            yield self.sample(i)

    # -- one sample -----------------------------------------------------------
    def _pick_shape(self, rng: np.random.Generator) -> int:
        if self.config.balance_categories:
            cat = self._categories[int(rng.integers(len(self._categories)))]
            ids = self._by_category[cat]
            return ids[int(rng.integers(len(ids)))]
        return self.shape_ids[int(rng.integers(len(self.shape_ids)))]

    def _jittered_mesh(self, shape_id: int, rng: np.random.Generator):
        """The shape, stretched per axis when `shape_scale` asks for it (draws nothing otherwise, so
        the streams of configs without it stay as they were)."""
        mesh = self.library.mesh(shape_id)
        if self.config.shape_scale is None:
            return mesh
        lo, hi = np.log(self.config.shape_scale)
        v = np.asarray(mesh.vertices, np.float64) * np.exp(rng.uniform(lo, hi, 3))
        v /= max(float(np.linalg.norm(v, axis=1).max()), 1e-9)
        import trimesh

        return trimesh.Trimesh(v, mesh.faces, process=False)

    def _draw_pose(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        cfg = self.config
        for _ in range(1000):
            a = float(rng.uniform(*cfg.azimuth_range)) % 360.0
            e = float(rng.uniform(*cfg.elevation_range))
            t = float(np.clip(rng.normal(0.0, cfg.theta_std), -cfg.theta_max, cfg.theta_max)) if cfg.theta_std > 0 else 0.0
            d = float(rng.uniform(*cfg.distance_range))
            if cfg.pose_subset is None or cfg.pose_holdout.split(a, e, t) == cfg.pose_subset:
                return a, e, t, d
        raise ValueError(f"no pose of subset {cfg.pose_subset!r} in the configured ranges")

    def _place(self, rng, vertices: np.ndarray, pose) -> tuple[Intrinsics, tuple[float, float, float, float], bool]:
        """Focal length and principal point: where the object lands in the frame."""
        cfg = self.config
        W, H = cfg.width, cfg.height
        f = self._base_focal * float(rng.uniform(*cfg.focal_range))
        K0 = Intrinsics(W, H, f, f, W / 2.0, H / 2.0)
        uv = cam.project(vertices, *pose, K0)
        x0, y0 = uv.min(axis=0)
        x1, y1 = uv.max(axis=0)
        bw, bh = x1 - x0, y1 - y0
        truncate = rng.random() < cfg.p_truncate
        mx = -cfg.max_truncation * bw if truncate else cfg.margin
        my = -cfg.max_truncation * bh if truncate else cfg.margin

        def shift(lo_edge, hi_edge, size, m):
            lo, hi = m - lo_edge, size - m - hi_edge  # shift keeping lo_edge + s >= m and hi_edge + s <= size - m
            return float(rng.uniform(lo, hi)) if hi > lo else (size - lo_edge - hi_edge) / 2.0

        dx, dy = shift(x0, x1, W, mx), shift(y0, y1, H, my)
        K = Intrinsics(W, H, f, f, W / 2.0 + dx, H / 2.0 + dy)
        full = (float(x0 + dx), float(y0 + dy), float(x1 + dx), float(y1 + dy))
        truncated = full[0] < 0 or full[1] < 0 or full[2] > W or full[3] > H
        return K, full, truncated

    def make(self, shape_id: int, rng: np.random.Generator) -> Sample:
        """A sample of one shape drawn with `rng` (what `sample` does after picking the shape)."""
        cfg = self.config
        W, H, ss = cfg.width, cfg.height, cfg.supersample
        shape = self.shapes.get(shape_id) or self.library.get(shape_id)
        mesh = self._jittered_mesh(shape_id, rng)
        pose = self._draw_pose(rng)
        K, full_box, truncated = self._place(rng, np.asarray(mesh.vertices, np.float64), pose)
        meta: dict = {}

        # Geometry at ss x, box-filtered to the canvas.
        Ks = Intrinsics(W * ss, H * ss, K.fx * ss, K.fy * ss, K.cx * ss, K.cy * ss)
        res = self.renderer.render(mesh, *pose, intrinsics=Ks)
        cnt = _downsample(res.mask, ss)
        cover = cnt / float(ss * ss)
        nsum = _downsample(res.normals, ss)
        dsum = _downsample(res.depth, ss)
        any_px = cnt > 0
        normals = nsum / np.maximum(np.linalg.norm(nsum, axis=-1, keepdims=True), 1e-6)
        depth = np.where(any_px, dsum / np.maximum(cnt, 1), 0.0).astype(np.float32)
        mask = cover >= 0.5

        # Object colour on the covered pixels only.
        obj = np.zeros((H, W, 3), np.float32)
        ys, xs = np.nonzero(any_px)
        if len(ys):
            X = surface_points(depth, K, pose)[ys, xs]
            rays = pixel_rays(K)[ys, xs]
            albedo, meta["albedo"] = self._albedo(rng, X)
            obj[ys, xs], meta["light"] = self._shade(rng, normals[ys, xs], rays, albedo)

        # Background, clutter, shadow, object, occluder.
        img, meta["background"] = self._background(rng, W, H)
        if rng.random() < cfg.p_clutter:
            obj_side = max(full_box[2] - full_box[0], full_box[3] - full_box[1], 0.15 * min(W, H))
            meta["clutter"] = self._add_clutter(rng, img, shape_id, obj_side)
        if rng.random() < cfg.p_shadow and len(ys):
            self._add_shadow(rng, img, cover)
        a = cover[..., None]
        img = img * (1.0 - a) + obj * a

        visible = mask
        occluded_fraction = 0.0
        if rng.random() < cfg.p_occlusion and mask.any():
            occ = self._occluder(rng, mask, box_of(mask))
            if occ is not None:
                alpha, tex, occluded_fraction = occ
                img = img * (1.0 - alpha[..., None]) + tex * alpha[..., None]
                visible = mask & (alpha < 0.5)
                meta["occluder"] = round(occluded_fraction, 3)

        image = self._degrade(rng, img, meta)
        normals = np.where(mask[..., None], normals, 0.0).astype(np.float32)
        depth = np.where(mask, depth, 0.0).astype(np.float32)
        return Sample(
            image=image, shape_id=int(shape_id), category=shape.category, name=shape.name, pose=pose,
            box=box_of(visible), full_box=full_box, mask=mask, visible_mask=visible, depth=depth, normals=normals,
            intrinsics=K, occluded_fraction=occluded_fraction, truncated=truncated, meta=meta,
        )

    # -- appearance -----------------------------------------------------------
    def _albedo(self, rng, X: np.ndarray) -> tuple[np.ndarray, str]:
        mode = _choice(rng, self.config.albedo_weights)
        c1 = random_colour(rng)
        if mode == "uniform":
            alb = np.broadcast_to(c1, X.shape).astype(np.float32)
        elif mode == "two_tone":
            c2 = random_colour(rng)
            n = rng.standard_normal(3)
            n /= np.linalg.norm(n)
            if rng.random() < 0.5:  # horizontal splits (stripe, hull/deck) are common in real objects
                n = np.array([0.0, 0.0, 1.0]) + 0.3 * n
                n /= np.linalg.norm(n)
            off = rng.uniform(-0.4, 0.4)
            s = X @ n.astype(np.float32) - off
            w = np.clip(0.5 + s / 0.02, 0, 1)[:, None]  # a narrow soft edge
            alb = (c1 * (1 - w) + c2 * w).astype(np.float32)
        elif mode == "texture":
            c2 = random_colour(rng)
            kind = rng.choice(["blend", "patches", "stripes"])
            nz = value_noise_3d(rng, X, octaves=int(rng.integers(2, 5)), frequency=float(rng.uniform(1.0, 5.0)))
            nz = (nz - nz.min()) / max(float(nz.max() - nz.min()), 1e-6)
            if kind == "patches":
                w = np.clip((nz - 0.5) / 0.04 + 0.5, 0, 1)
            elif kind == "stripes":
                w = 0.5 + 0.5 * np.sin(nz * float(rng.uniform(8, 25)))
            else:
                w = nz
            alb = (c1 * (1 - w[:, None]) + c2 * w[:, None]).astype(np.float32)
            mode = f"texture-{kind}"
        else:
            raise ValueError(f"unknown albedo mode {mode!r}")
        if rng.random() < self.config.p_dirt:
            d = value_noise_3d(rng, X, octaves=2, frequency=float(rng.uniform(1.5, 5)))
            alb = alb * (1.0 - float(rng.uniform(0.08, 0.25)) * d[:, None])
        return alb, mode

    def _lights(self, rng) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        lights = []
        for k in range(int(rng.integers(1, 4))):
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            d[2] = abs(d[2]) * 0.9 + 0.1          # mostly from the viewer's side
            d[1] = d[1] * 0.7 + 0.3               # mostly from above
            d /= np.linalg.norm(d)
            intensity = rng.uniform(0.55, 1.0) if k == 0 else rng.uniform(0.1, 0.5)
            warmth = rng.uniform(-0.12, 0.12)
            colour = np.array([1 + warmth, 1.0, 1 - warmth]) * intensity
            lights.append((d.astype(np.float32), colour.astype(np.float32)))
        ambient = (rng.uniform(0.15, 0.45) * (1 + rng.uniform(-0.08, 0.08, 3))).astype(np.float32)
        return lights, ambient

    def _shade(self, rng, n: np.ndarray, rays: np.ndarray, albedo: np.ndarray, specular: bool | None = None):
        lights, ambient = self._lights(rng)
        # Sky from above, darker ground: a cheap hemisphere ambient term.
        light = ambient[None, :] * (0.8 + 0.2 * n[:, 1:2])
        for d, c in lights:
            light = light + np.clip(n @ d, 0, None)[:, None] * c[None, :]
        out = albedo * light
        spec_on = (rng.random() < self.config.p_specular) if specular is None else specular
        if spec_on:
            v = -rays / np.linalg.norm(rays, axis=-1, keepdims=True)
            shininess = float(np.exp(rng.uniform(np.log(8), np.log(150))))
            ks = float(rng.uniform(0.1, 0.6))
            for d, c in lights:
                h = v + d[None, :]
                h /= np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-6)
                out = out + ks * (np.clip(np.einsum("nc,nc->n", n, h), 0, None) ** shininess)[:, None] * c[None, :]
        out *= float(rng.uniform(0.85, 1.2))  # exposure
        return _tonemap(out), {"lights": len(lights), "specular": bool(spec_on)}

    # -- background -----------------------------------------------------------
    def _background(self, rng, W: int, H: int, weights: dict | None = None) -> tuple[np.ndarray, str]:
        weights = dict(weights or self.config.background_weights)
        if not len(self._photos):
            weights.pop("photo", None)
        kind = _choice(rng, weights)
        if kind == "photo":
            crop = self._photos.crop(rng, W, H)
            if crop is not None:
                return crop, kind
            kind = "noise"
        if kind == "plain_white":
            return np.ones((H, W, 3), np.float32), kind
        if kind == "plain":
            c = random_colour(rng, p_neutral=0.6)
            n = value_noise_2d(rng, H, W, octaves=2, cells=1.5)[..., None]
            return np.clip(c * (0.9 + 0.2 * n), 0, 1).astype(np.float32), kind
        if kind == "gradient":
            c1, c2 = random_colour(rng), random_colour(rng)
            yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
            if rng.random() < 0.7:
                ang = rng.uniform(0, 2 * np.pi)
                t = (xx - W / 2) * np.cos(ang) + (yy - H / 2) * np.sin(ang)
            else:
                cx, cy = rng.uniform(0, W), rng.uniform(0, H)
                t = np.hypot(xx - cx, yy - cy)
            t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
            t = t ** float(rng.uniform(0.5, 2.0))
            return (c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.float32), kind
        if kind == "noise":
            c1, c2 = random_colour(rng), random_colour(rng)
            n = value_noise_2d(rng, H, W, octaves=int(rng.integers(2, 6)), cells=float(rng.uniform(1.5, 8)),
                               persistence=float(rng.uniform(0.35, 0.7)))
            if rng.random() < 0.3:
                c3 = random_colour(rng)
                m = value_noise_2d(rng, H, W, octaves=2, cells=2.0)[..., None]
                c2 = c2 * (1 - m) + c3 * m
            return (c1 * (1 - n[..., None]) + c2 * n[..., None]).astype(np.float32), kind
        if kind == "shapes":
            base = tuple(int(x * 255) for x in random_colour(rng))
            im = Image.new("RGB", (W, H), base)
            dr = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(3, 15))):
                col = tuple(int(x * 255) for x in random_colour(rng))
                x0, y0 = rng.uniform(-0.2 * W, W), rng.uniform(-0.2 * H, H)
                w, h = rng.uniform(0.05, 0.7) * W, rng.uniform(0.05, 0.7) * H
                r = rng.random()
                if r < 0.4:
                    dr.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
                elif r < 0.7:
                    dr.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
                elif r < 0.85:
                    dr.polygon(_random_polygon(rng, x0 + w / 2, y0 + h / 2, max(w, h) / 2), fill=col)
                else:
                    dr.line([x0, y0, x0 + w, y0 + h], fill=col, width=int(rng.integers(1, 6)))
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 2.0))))
            arr = _from_image(im)
            return arr, kind
        raise ValueError(f"unknown background kind {kind!r}")

    # -- clutter --------------------------------------------------------------
    def _sprite(self, k: int) -> _Sprite | None:
        """Clutter rendering k of the bank: a library shape at a random pose (cached, deterministic in k)."""
        if k in self._sprites:
            return self._sprites[k]
        cfg = self.config
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, k, 0xC1077E5])
        sid = self.shape_ids[int(rng.integers(len(self.shape_ids)))]
        a, e = float(rng.uniform(0, 360)), float(rng.uniform(-20, 70))
        t = float(np.clip(rng.normal(0, 15), -45, 45))
        ss = cfg.supersample
        Ks = Intrinsics.fitting_unit_sphere(cfg.width * ss, cfg.height * ss, 3.0)
        res = self._clutter_renderer.render(self.library.mesh(sid), a, e, t, 3.0, intrinsics=Ks)
        cnt = _downsample(res.mask, ss)
        nsum = _downsample(res.normals, ss)
        b = box_of(cnt > 0)
        if b is None:
            self._sprites[k] = None
            return None
        x0, y0, x1, y1 = (int(v) for v in b)
        n = nsum[y0:y1, x0:x1]
        n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        sprite = _Sprite(n.astype(np.float32), (cnt[y0:y1, x0:x1] / (ss * ss)).astype(np.float32), sid)
        self._sprites[k] = sprite
        return sprite

    def _add_clutter(self, rng, img: np.ndarray, exclude: int, obj_side: float) -> int:
        cfg = self.config
        H, W = img.shape[:2]
        count = int(rng.integers(cfg.clutter_count[0], cfg.clutter_count[1] + 1))
        drawn = 0
        for _ in range(count):
            k = int(rng.integers(max(1, cfg.clutter_bank)))
            sp = self._sprite(k)
            # the rng draws below happen whatever the sprite, so later draws do not depend on the cache
            side = float(rng.uniform(*cfg.clutter_scale)) * obj_side
            px, py = rng.uniform(-0.3, 1.0), rng.uniform(-0.3, 1.0)
            flip = rng.random() < 0.5
            blur = float(rng.uniform(0.0, 2.0))  # out of focus behind the object
            sub = np.random.default_rng(rng.integers(2**63))
            if sp is None or (sp.shape_id == exclude and len(self.shape_ids) > 1):
                continue
            h, w = sp.alpha.shape
            ys, xs = np.nonzero(sp.alpha > 0)
            col = np.zeros((h, w, 3), np.float32)
            alb = np.broadcast_to(random_colour(sub), (len(ys), 3)).astype(np.float32)
            rays = np.tile(np.array([0, 0, -1], np.float32), (len(ys), 1))
            col[ys, xs], _ = self._shade(sub, sp.normals[ys, xs], rays, alb, specular=False)
            scale = side / max(h, w)
            nw, nh = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
            rgba = np.dstack([col, sp.alpha])
            im = Image.fromarray(np.clip(rgba * 255 + 0.5, 0, 255).astype(np.uint8), "RGBA")
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            if flip:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if blur > 0.3:
                im = im.filter(ImageFilter.GaussianBlur(blur))
            x0 = int(px * W) - nw // 3 if px < 0 else int(px * (W - nw * 0.6))
            y0 = int(py * H) - nh // 3 if py < 0 else int(py * (H - nh * 0.6))
            paste_rgba(img, np.asarray(im, np.float32) / 255.0, x0, y0)
            drawn += 1
        return drawn


    def _add_shadow(self, rng, img: np.ndarray, cover: np.ndarray) -> None:
        """A soft shadow cast on a ground behind/below the object: the silhouette squashed towards its base."""
        H, W = cover.shape
        x0, y0, x1, y1 = box_of(cover > 0)
        bh = y1 - y0
        k = float(rng.uniform(0.25, 0.8))            # vertical squash
        sh = float(rng.uniform(-0.8, 0.8))           # shear: light from the side
        dy = float(rng.uniform(0.0, 0.08)) * bh
        yb = y1
        # output (x, y) <- input (x + sh * (y - yb - dy) / k, yb + (y - yb - dy) / k)
        coeffs = (1.0, sh / k, -sh * (yb + dy) / k, 0.0, 1.0 / k, yb - (yb + dy) / k)
        m = Image.fromarray((cover * 255).astype(np.uint8), "L")
        m = m.transform((W, H), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
        m = m.filter(ImageFilter.GaussianBlur(max(1.0, float(rng.uniform(0.03, 0.1)) * bh)))
        s = np.asarray(m, np.float32) / 255.0 * float(rng.uniform(0.15, 0.45))
        img *= (1.0 - s)[..., None]

    # -- occluder -------------------------------------------------------------
    def _occluder(self, rng, mask: np.ndarray, box) -> tuple[np.ndarray, np.ndarray, float] | None:
        cfg = self.config
        H, W = mask.shape
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        tex, _ = self._background(rng, W, H, {k: v for k, v in cfg.background_weights.items() if k != "plain_white"}
                                  or {"noise": 1.0})
        shade = float(rng.uniform(0.6, 1.1))
        tex = np.clip(tex * shade, 0, 1)
        total = float(mask.sum())
        scale = 1.0
        for _attempt in range(4):
            up = 4
            m = Image.new("L", (W * up, H * up), 0)
            dr = ImageDraw.Draw(m)
            if rng.random() < 0.5:  # a polygon over part of the object
                cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
                r = rng.uniform(0.2, 0.5) * max(bw, bh) * scale
                dr.polygon([(x * up, y * up) for x, y in _random_polygon(rng, cx, cy, r)], fill=255)
            else:  # a bar (post, branch, person's arm) entering the frame
                ang = rng.uniform(0, np.pi)
                cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
                half_w = rng.uniform(0.08, 0.25) * max(bw, bh) * scale
                L = 2.0 * (W + H)
                dx, dy = np.cos(ang), np.sin(ang)
                nx, ny = -dy, dx
                if rng.random() < 0.5:  # from one end, stopping inside the box
                    p0 = (cx - dx * L, cy - dy * L)
                else:
                    p0 = (cx + dx * L, cy + dy * L)
                pts = [(p0[0] + nx * half_w, p0[1] + ny * half_w), (cx + nx * half_w, cy + ny * half_w),
                       (cx - nx * half_w, cy - ny * half_w), (p0[0] - nx * half_w, p0[1] - ny * half_w)]
                dr.polygon([(x * up, y * up) for x, y in pts], fill=255)
            alpha = np.asarray(m.resize((W, H), Image.Resampling.BOX), np.float32) / 255.0
            covered = float((mask & (alpha >= 0.5)).sum()) / total
            if covered <= 1.0 - cfg.min_visible and covered > 0.03:
                return alpha, tex, covered
            scale *= 0.7 if covered > 0.03 else 1.3
        return None

    # -- degradations ---------------------------------------------------------
    def _degrade(self, rng, img: np.ndarray, meta: dict) -> np.ndarray:
        cfg = self.config
        H, W = img.shape[:2]
        steps = []
        if rng.random() < cfg.p_color_jitter:
            gain = rng.uniform(0.9, 1.1, 3).astype(np.float32) * float(rng.uniform(0.8, 1.2))
            contrast = float(rng.uniform(0.75, 1.25))
            sat = float(rng.uniform(0.6, 1.3))
            grey = img.mean(axis=2, keepdims=True)
            img = grey + (img - grey) * sat
            img = (img - 0.5) * contrast + 0.5
            img = img * gain
            steps.append("color")
        if rng.random() < cfg.p_vignette:
            yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
            r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
            img = img * (1 - float(rng.uniform(0.1, 0.35)) * r2 / 2)[..., None]
            steps.append("vignette")
        im = _to_image(img)
        if rng.random() < cfg.p_lowres:
            f = float(rng.uniform(*cfg.lowres_range))
            im = im.resize((max(8, int(W * f)), max(8, int(H * f))), Image.Resampling.BILINEAR).resize(
                (W, H), Image.Resampling.BILINEAR
            )
            steps.append("lowres")
        if rng.random() < cfg.p_blur:
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(*cfg.blur_sigma))))
            steps.append("blur")
        out = np.asarray(im)
        if rng.random() < cfg.p_noise:
            sigma = float(rng.uniform(*cfg.noise_sigma))
            noise = rng.standard_normal((H, W, 3), dtype=np.float32) * sigma
            if rng.random() < 0.5:  # luminance-heavy sensor noise
                noise = 0.7 * noise[..., :1] + 0.3 * noise
            out = np.clip(out.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
            steps.append("noise")
        if rng.random() < cfg.p_jpeg:
            q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
            buf = io.BytesIO()
            Image.fromarray(out).save(buf, format="JPEG", quality=q)
            buf.seek(0)
            out = np.asarray(Image.open(buf).convert("RGB"))
            steps.append(f"jpeg{q}")
        meta["degradations"] = steps
        return np.ascontiguousarray(out, dtype=np.uint8)


def _random_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    k = int(rng.integers(3, 9))
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = r * rng.uniform(0.5, 1.0, k)
    return [(float(cx + rr * np.cos(a)), float(cy + rr * np.sin(a))) for a, rr in zip(ang, rad)]


# --------------------------------------------------------------------------- entry points


def generate(library, shape_ids: Sequence[int] | None, n: int, seed: int = 0, config: SyntheticConfig | None = None,
             renderer=None, start: int = 0) -> Iterator[Sample]:
    """Samples start .. start + n - 1 of the stream defined by (library, shape_ids, seed, config)."""
    gen = SyntheticGenerator(library, shape_ids, seed, config, renderer)
    try:
        yield from gen.samples(n, start)
    finally:
        gen.close()


def make_sample(library, shape_id: int, rng: np.random.Generator, config: SyntheticConfig | None = None,
                renderer=None, clutter_ids: Sequence[int] | None = None) -> Sample:
    """One sample of a given shape from a caller's rng (clutter from `clutter_ids`, default all shapes).

    For many samples build one SyntheticGenerator and call `make` repeatedly: it keeps
    the clutter bank and the renderer.
    """
    gen = SyntheticGenerator(library, clutter_ids, int(rng.integers(2**31)), config, renderer)
    try:
        return gen.make(shape_id, rng)
    finally:
        gen.close()
