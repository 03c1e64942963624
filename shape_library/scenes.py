"""Rendered scenes for S2 surface normals: library shapes standing on a ground plane, maybe walls.

Every pixel of a scene that shows a surface (objects, ground, walls) carries its exact
camera-frame unit normal, from the renderer's flat pass (see `render.py`); pixels that show
no surface ("sky", beyond the finite ground and walls) have ``mask`` False and a zero normal,
and are left out of the loss and the metrics.

* **Layout** (library frame, +z up): 1-3 library shapes, each scaled, turned about z and
  placed on the ground plane z = -g (g > 0, so the contract camera, which always looks at the
  origin, sees the objects and the floor around them); with probability ``p_walls`` one wall,
  or two meeting in a corner, behind the objects (on the far side from the camera).
* **Camera**: the contract pose (azimuth uniform, elevation in a range, small in-plane
  rotation, distance in a range) with a random field of view.
* **Appearance**: reused from `synthetic.py` (a :class:`SyntheticGenerator` lends its albedo,
  lighting, background and degradation helpers): each object, the ground and each wall gets its
  own albedo (uniform, two-tone or 3D textures that stick to the surface); one set of random
  lights shades the whole scene; a soft contact shadow darkens the ground under each object;
  "sky" pixels get a random background; then colour jitter, blur, noise, JPEG as for the photos.
  Rendered at ``supersample`` x and box filtered.

Normals follow ``Sample.normals``: the contract camera frame (looking along -z, +y up), facing
the viewer, so visible surfaces have n_z > 0.  Scene i is a pure function of (seed, i, shape ids,
config).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import trimesh

from . import camera as cam
from .camera import Intrinsics
from .render import pixel_rays
from .synthetic import SyntheticConfig, SyntheticGenerator, _downsample, sample_rng

SKY, GROUND, WALL, OBJECT = 0, 1, 2, 3   # pixel labels; objects are OBJECT + k
MIXED = 255                              # a pixel whose sub-pixels show different surfaces


@dataclass
class SceneConfig:
    size: int = 64                                   # square output, pixels
    supersample: int = 2
    n_objects: tuple[int, int] = (1, 3)              # inclusive
    object_scale: tuple[float, float] = (0.55, 1.0)  # library shapes have unit radius
    spread: float = 1.2                              # objects are placed within this radius (xy)
    ground_drop: tuple[float, float] = (0.3, 0.9)    # the ground plane is z = -g
    ground_extent: float = 7.0                       # half side of the ground square
    p_walls: float = 0.5
    p_two_walls: float = 0.4                         # of the scenes with walls: a corner
    wall_distance: tuple[float, float] = (1.6, 3.0)
    wall_height: tuple[float, float] = (1.5, 4.0)
    elevation_range: tuple[float, float] = (5.0, 60.0)
    theta_std: float = 5.0
    theta_max: float = 15.0
    distance_range: tuple[float, float] = (2.6, 4.0)
    fov_range: tuple[float, float] = (45.0, 65.0)    # full field of view, degrees
    texture_scale: tuple[float, float] = (0.15, 0.6)  # ground/wall texture coordinates are scaled by this
    p_contact_shadow: float = 0.8
    # Appearance: albedo, lights, background ("sky") and degradations come from SyntheticConfig.
    appearance: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(
        p_clutter=0.0, p_occlusion=0.0, p_shadow=0.0, p_truncate=0.0, p_blur=0.3, blur_sigma=(0.3, 0.8),
        p_lowres=0.1,
        background_weights={"noise": 0.35, "gradient": 0.35, "plain": 0.3}))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["appearance"] = self.appearance.to_dict()
        return d


@dataclass
class Scene:
    image: np.ndarray          # (S, S, 3) uint8 RGB
    normals: np.ndarray        # (S, S, 3) float32 unit, camera frame, facing the viewer; 0 where ~mask
    mask: np.ndarray           # (S, S) bool: the pixel shows a surface (the loss and metrics use only these)
    labels: np.ndarray         # (S, S) uint8: SKY, GROUND, WALL, OBJECT + k, or MIXED (sub-pixels disagree)
    depth: np.ndarray          # (S, S) float32 along the viewing axis, 0 on sky
    pose: tuple[float, float, float, float]
    intrinsics: Intrinsics
    shape_ids: list[int]
    ground_z: float
    index: int = 0
    seed: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def rotation(self) -> np.ndarray:
        return cam.rotation(*self.pose[:3])


def _quad(corners: np.ndarray) -> trimesh.Trimesh:
    """Two triangles over 4 corners given counter-clockwise seen from the side the normal points to."""
    return trimesh.Trimesh(vertices=np.asarray(corners, np.float64), faces=[[0, 1, 2], [0, 2, 3]], process=False)


class SceneGenerator:
    """Scenes of `shape_ids` (all library shapes when None); reuse it for many scenes."""

    def __init__(self, library, shape_ids: Sequence[int] | None = None, seed: int = 0,
                 config: SceneConfig | None = None, renderer=None):
        from .render import Renderer

        self.library, self.seed = library, int(seed)
        self.config = config or SceneConfig()
        c = self.config
        app = replace(c.appearance, width=c.size, height=c.size, supersample=c.supersample)
        # Lends its appearance helpers (albedo, lights, backgrounds, degradations).
        self._look = SyntheticGenerator(library, shape_ids, seed, app, renderer=renderer or Renderer(8, 8))
        self.shape_ids = list(self._look.shape_ids)
        self.renderer = self._look.renderer
        self._meshes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def close(self) -> None:
        self._look.close()

    def __enter__(self) -> "SceneGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _mesh(self, sid: int) -> tuple[np.ndarray, np.ndarray]:
        if sid not in self._meshes:
            m = self.library.mesh(sid)
            self._meshes[sid] = (np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64))
        return self._meshes[sid]

    def scenes(self, n: int, start: int = 0) -> Iterator[Scene]:
        for i in range(start, start + n):
            yield self.scene(i)

    # -- layout ---------------------------------------------------------------
    def _layout(self, rng, azimuth: float):
        c = self.config
        g = float(rng.uniform(*c.ground_drop))
        k = int(rng.integers(c.n_objects[0], c.n_objects[1] + 1))
        verts, faces, objects, offset = [], [], [], 0
        for j in range(k):
            sid = self.shape_ids[int(rng.integers(len(self.shape_ids)))]
            v, f = self._mesh(sid)
            s = float(rng.uniform(*c.object_scale)) * (1.0 if k == 1 else 0.85)
            phi = float(rng.uniform(0, 2 * np.pi))
            Rz = np.array([[math.cos(phi), -math.sin(phi), 0], [math.sin(phi), math.cos(phi), 0], [0, 0, 1]])
            if k == 1:
                xy = rng.uniform(-0.25, 0.25, 2)
            else:
                ang = 2 * np.pi * j / k + rng.uniform(-0.5, 0.5)
                xy = c.spread * rng.uniform(0.35, 1.0) * np.array([math.cos(ang), math.sin(ang)])
            w = (v @ Rz.T) * s
            w[:, 2] += -g - w[:, 2].min()
            w[:, :2] += xy
            verts.append(w)
            faces.append(f + offset)
            offset += len(w)
            r = float(np.linalg.norm(w[:, :2] - xy, axis=1).max())
            objects.append({"shape_id": int(sid), "xy": xy, "radius": r, "height": float(w[:, 2].max() + g)})
        E = c.ground_extent
        surfaces = [_quad([[-E, -E, -g], [E, -E, -g], [E, E, -g], [-E, E, -g]])]
        walls = []
        if rng.random() < c.p_walls:
            a = math.radians(azimuth + float(rng.uniform(-40, 40)))
            toward_cam = np.array([math.sin(a), -math.cos(a), 0.0])  # horizontal direction of the camera (front -y)
            n_walls = 2 if rng.random() < c.p_two_walls else 1
            normals = [toward_cam]
            if n_walls == 2:   # a corner: two walls at right angles, the camera looking into it
                ca, sa = math.cos(math.pi / 4), math.sin(math.pi / 4)
                n1 = np.array([ca * toward_cam[0] - sa * toward_cam[1], sa * toward_cam[0] + ca * toward_cam[1], 0.0])
                n2 = np.array([ca * toward_cam[0] + sa * toward_cam[1], -sa * toward_cam[0] + ca * toward_cam[1], 0.0])
                normals = [n1, n2]
            h = float(rng.uniform(*c.wall_height))
            for n in normals:
                dist = float(rng.uniform(*c.wall_distance))
                p0 = -n * dist
                t = np.array([-n[1], n[0], 0.0])   # along the wall; t x z = n
                z0, z1 = -g, -g + h
                corners = [p0 - E * t + [0, 0, z0], p0 + E * t + [0, 0, z0], p0 + E * t + [0, 0, z1], p0 - E * t + [0, 0, z1]]
                walls.append({"normal": n, "point": p0})
                surfaces.append(_quad(corners))
        for q in surfaces:
            verts.append(np.asarray(q.vertices))
            faces.append(np.asarray(q.faces) + offset)
            offset += len(q.vertices)
        mesh = trimesh.Trimesh(vertices=np.concatenate(verts), faces=np.concatenate(faces), process=False)
        return mesh, g, objects, walls

    # -- one scene ------------------------------------------------------------
    def scene(self, index: int) -> Scene:
        c = self.config
        rng = sample_rng(self.seed, index)
        S, ss = c.size, c.supersample
        a = float(rng.uniform(0, 360))
        e = float(rng.uniform(*c.elevation_range))
        t = float(np.clip(rng.normal(0, c.theta_std), -c.theta_max, c.theta_max)) if c.theta_std > 0 else 0.0
        d = float(rng.uniform(*c.distance_range))
        fov = math.radians(float(rng.uniform(*c.fov_range)))
        f = 0.5 * S / math.tan(fov / 2)
        K = Intrinsics(S, S, f, f, S / 2.0, S / 2.0)
        Ks = Intrinsics(S * ss, S * ss, f * ss, f * ss, S * ss / 2.0, S * ss / 2.0)
        mesh, g, objects, walls = self._layout(rng, a)
        try:
            res = self.renderer.render(mesh, a, e, t, d, intrinsics=Ks)
        finally:
            self.renderer.close()   # a fresh mesh per scene: never reuse the node (it is keyed by id())
        hit = res.mask
        n_cam = res.normals
        R = cam.rotation(a, e, t).astype(np.float32)
        C = cam.center(a, e, d).astype(np.float32)
        X = (pixel_rays(Ks) * res.depth[..., None]) @ R + C          # library-frame points
        n_lib = n_cam @ R                                              # R^T n
        # Which surface each sub-pixel shows (for albedo and shadows only; the normals are exact anyway).
        labels = np.zeros(hit.shape, np.uint8)
        tol = 0.02 + 0.004 * res.depth
        labels[hit] = OBJECT
        on_ground = hit & (np.abs(X[..., 2] + g) < tol) & (n_lib[..., 2] > 0.99)
        labels[on_ground] = GROUND
        for w in walls:
            on = hit & (np.abs((X - w["point"].astype(np.float32)) @ w["normal"].astype(np.float32)) < tol) \
                & ((n_lib @ w["normal"].astype(np.float32)) > 0.99)
            labels[on] = WALL
        obj_px = labels == OBJECT
        if len(objects) > 1 and obj_px.any():
            cxy = np.array([o["xy"] for o in objects], np.float32)
            dist = np.linalg.norm(X[obj_px][:, None, :2] - cxy[None], axis=-1) / np.array([o["radius"] for o in objects], np.float32)
            labels[obj_px] = OBJECT + dist.argmin(1).astype(np.uint8)
        # Appearance at the supersampled resolution.
        look = self._look
        H = W = S * ss
        img, bg_kind = look._background(rng, W, H)
        ys, xs = np.nonzero(hit)
        meta: dict = {"background": bg_kind, "objects": len(objects), "walls": len(walls)}
        if len(ys):
            lab = labels[ys, xs]
            albedo = np.zeros((len(ys), 3), np.float32)
            modes = []
            for value in np.unique(lab):
                sel = lab == value
                pts = X[ys[sel], xs[sel]]
                if value in (GROUND, WALL):
                    pts = pts * float(rng.uniform(*c.texture_scale))
                albedo[sel], mode = look._albedo(rng, pts)
                modes.append(mode)
            if rng.random() < c.p_contact_shadow:
                gsel = lab == GROUND
                if gsel.any():
                    p = X[ys[gsel], xs[gsel]][:, :2]
                    strength = float(rng.uniform(0.3, 0.7))
                    dark = np.zeros(len(p), np.float32)
                    for o in objects:
                        r = np.linalg.norm(p - o["xy"].astype(np.float32), axis=1) / max(o["radius"], 1e-3)
                        dark = np.maximum(dark, np.exp(-np.maximum(r - 0.5, 0) ** 2 / 0.25))
                    albedo[gsel] *= (1 - strength * dark)[:, None]
            rays = pixel_rays(Ks)[ys, xs]
            img[ys, xs], meta["light"] = look._shade(rng, n_cam[ys, xs], rays, albedo)
            meta["albedo"] = modes
        img = _downsample(img, ss) / float(ss * ss)
        image = look._degrade(rng, img, meta)
        cnt = _downsample(hit, ss)
        nsum = _downsample(n_cam, ss)
        mask = cnt >= 0.5 * ss * ss
        normals = nsum / np.maximum(np.linalg.norm(nsum, axis=-1, keepdims=True), 1e-6)
        normals = np.where(mask[..., None], normals, 0.0).astype(np.float32)
        depth = np.where(mask, _downsample(res.depth, ss) / np.maximum(cnt, 1), 0.0).astype(np.float32)
        sub = labels.reshape(S, ss, S, ss)
        first = sub[:, 0, :, 0]
        labels_out = np.where((sub == first[:, None, :, None]).all(axis=(1, 3)), first, MIXED).astype(np.uint8)
        labels_out[~mask] = SKY
        return Scene(image=image, normals=normals, mask=mask, labels=labels_out, depth=depth, pose=(a, e, t, d),
                     intrinsics=K, shape_ids=[o["shape_id"] for o in objects], ground_z=-g, index=int(index),
                     seed=self.seed, meta=meta)


def generate(library, shape_ids: Sequence[int] | None, n: int, seed: int = 0, config: SceneConfig | None = None,
             start: int = 0) -> Iterator[Scene]:
    gen = SceneGenerator(library, shape_ids, seed, config)
    try:
        yield from gen.scenes(n, start)
    finally:
        gen.close()


def normals_to_rgb(normals: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Colour code (n + 1) / 2 * 255 as uint8 RGB; pixels outside `mask` black."""
    rgb = np.clip((np.asarray(normals, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if mask is not None:
        rgb[~mask] = 0
    return rgb


__all__ = ["SceneConfig", "Scene", "SceneGenerator", "generate", "normals_to_rgb", "SKY", "GROUND", "WALL", "OBJECT", "MIXED"]
