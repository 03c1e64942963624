"""Texture-free offscreen rendering with pyrender.

One FLAT pass draws every face in a colour that encodes its library-frame normal;
depth, silhouette, camera-frame normals and the grey Lambertian shading are all
derived from that single pass, so they agree pixel for pixel and the normals are
exact (no lighting or multisampling blends them).
"""
from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass, field

from .settings import get_settings

os.environ.setdefault("PYOPENGL_PLATFORM", get_settings().render_backend)

import numpy as np  # noqa: E402
import pyrender  # noqa: E402
import pyrender.renderer as _pyr_renderer  # noqa: E402
import trimesh  # noqa: E402
from PIL import Image  # noqa: E402

from . import camera as cam  # noqa: E402
from .camera import Intrinsics  # noqa: E402

# pyrender hard-codes a 4x multisampled framebuffer; multisampling would blend the
# normal colours at silhouettes and halves llvmpipe's speed.  0 samples is a plain
# renderbuffer (GL spec), the blit then is a copy.  Anti-alias by supersampling.
_orig_storage_ms = _pyr_renderer.glRenderbufferStorageMultisample


def _storage_without_msaa(target, samples, fmt, width, height):
    return _orig_storage_ms(target, 0, fmt, width, height)


_pyr_renderer.glRenderbufferStorageMultisample = _storage_without_msaa

# Fixed lights in the camera frame (direction towards the light, intensity).
DEFAULT_LIGHTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((-0.4, 0.6, 0.7), 0.65),   # key light: upper left, in front
    ((0.6, 0.1, 0.8), 0.30),    # fill light: right
    ((0.0, -0.5, 0.3), 0.10),   # bounce from below
)
DEFAULT_AMBIENT = 0.25
DEFAULT_DISTANCE = 3.0


@dataclass
class RenderResult:
    """Everything one view yields. Background pixels: mask False, depth 0, normals 0."""

    color: np.ndarray      # (H, W, 3) uint8, grey shading on `background`
    mask: np.ndarray       # (H, W) bool silhouette
    depth: np.ndarray      # (H, W) float32, distance along the viewing axis, 0 = background
    normals: np.ndarray    # (H, W, 3) float32 unit normals in the camera frame, facing the camera
    shading: np.ndarray    # (H, W) float32 in [0, 1], Lambertian grey before the background
    pose: tuple[float, float, float, float]
    intrinsics: Intrinsics
    extras: dict = field(default_factory=dict)

    def rgba(self) -> np.ndarray:
        return np.dstack([self.color, (self.mask * 255).astype(np.uint8)])


def _normal_coloured_primitive(mesh: trimesh.Trimesh) -> pyrender.Mesh:
    """Each face coloured by its library-frame normal mapped from [-1, 1] to [0, 255]."""
    coloured = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    coloured.visual.face_colors = np.round((np.clip(mesh.face_normals, -1, 1) + 1.0) * 127.5).astype(np.uint8)
    return pyrender.Mesh.from_trimesh(coloured, smooth=False)


def shade(normals: np.ndarray, mask: np.ndarray, lights=DEFAULT_LIGHTS, ambient: float = DEFAULT_AMBIENT) -> np.ndarray:
    """Lambertian grey level from camera-frame normals and directional lights."""
    out = np.full(mask.shape, ambient, np.float32)
    for direction, intensity in lights:
        d = np.asarray(direction, np.float32)
        d = d / np.linalg.norm(d)
        out += intensity * np.clip(normals @ d, 0.0, None)
    return np.where(mask, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


# One GL context per process.  pyrender's EGL `delete()` calls eglTerminate, which
# kills every other context on the display, and a context can be current in only
# one thread at a time: so all Renderer objects share one offscreen renderer, use
# it under a lock and release the context after each frame.
_GL_LOCK = threading.RLock()
_GL: dict[int, pyrender.OffscreenRenderer] = {}


def _offscreen(width: int, height: int) -> pyrender.OffscreenRenderer:
    pid = os.getpid()  # a forked worker needs a context of its own
    gl = _GL.get(pid)
    if gl is None:
        _GL.clear()
        gl = _GL[pid] = pyrender.OffscreenRenderer(width, height)
    gl.viewport_width, gl.viewport_height = width, height
    return gl


def _release_context(gl: pyrender.OffscreenRenderer) -> None:
    platform = getattr(gl, "_platform", None)
    if type(platform).__name__ == "EGLPlatform":
        from OpenGL.EGL import EGL_NO_CONTEXT, EGL_NO_SURFACE, eglMakeCurrent

        eglMakeCurrent(platform._egl_display, EGL_NO_SURFACE, EGL_NO_SURFACE, EGL_NO_CONTEXT)


def gl_renderer_name() -> str:
    """GL_RENDERER of this process's context (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)"), for benchmark labels."""
    from OpenGL.GL import GL_RENDERER, glGetString

    with _GL_LOCK:
        gl = _offscreen(8, 8)
        gl._platform.make_current()
        try:
            name = glGetString(GL_RENDERER)
        finally:
            _release_context(gl)
    return name.decode(errors="replace") if name else "unknown"


@atexit.register
def shutdown_gl() -> None:
    with _GL_LOCK:
        gl = _GL.pop(os.getpid(), None)
        if gl is not None:
            try:
                gl.delete()
            except Exception:  # the display may already be gone at exit
                pass


class Renderer:
    """A scene of its own on the process's shared GL context; reuse it across views and shapes."""

    def __init__(self, width: int = 128, height: int | None = None):
        self.width, self.height = int(width), int(height or width)
        self._scene = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[0, 0, 0])
        self._mesh_node: pyrender.Node | None = None
        self._mesh_key: int | None = None
        self._cam_node: pyrender.Node | None = None

    def close(self) -> None:
        """Forget the scene's mesh; the shared context stays for the next renderer."""
        if self._mesh_node is not None:
            self._scene.remove_node(self._mesh_node)
            self._mesh_node, self._mesh_key = None, None

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_mesh(self, mesh: trimesh.Trimesh) -> None:
        if self._mesh_key == id(mesh) and self._mesh_node is not None:
            return
        if self._mesh_node is not None:
            self._scene.remove_node(self._mesh_node)
        self._mesh_node = self._scene.add(_normal_coloured_primitive(mesh))
        self._mesh_key = id(mesh)

    def render(
        self,
        mesh: trimesh.Trimesh,
        azimuth: float,
        elevation: float,
        theta: float,
        distance: float = DEFAULT_DISTANCE,
        intrinsics: Intrinsics | None = None,
        background: tuple[int, int, int] = (255, 255, 255),
        lights=DEFAULT_LIGHTS,
        ambient: float = DEFAULT_AMBIENT,
    ) -> RenderResult:
        """Render `mesh` (library frame) from the contract pose (degrees)."""
        K = intrinsics or Intrinsics.fitting_unit_sphere(self.width, self.height, distance)
        self.width, self.height = K.width, K.height
        self.set_mesh(mesh)
        if self._cam_node is not None:
            self._scene.remove_node(self._cam_node)
        znear = max(1e-3, distance - 2.0) * 0.5
        camera = pyrender.IntrinsicsCamera(K.fx, K.fy, K.cx, K.cy, znear=znear, zfar=distance + 10.0)
        self._cam_node = self._scene.add(camera, pose=cam.camera_to_world(azimuth, elevation, theta, distance))
        with _GL_LOCK:
            gl = _offscreen(K.width, K.height)
            try:
                rgba, depth = gl.render(
                    self._scene, flags=pyrender.RenderFlags.FLAT | pyrender.RenderFlags.RGBA | pyrender.RenderFlags.SKIP_CULL_FACES
                )
            finally:
                _release_context(gl)
        mask = depth > 0
        R = cam.rotation(azimuth, elevation, theta)
        n_world = rgba[..., :3].astype(np.float32) / 127.5 - 1.0
        n_cam = n_world @ R.T.astype(np.float32)
        n_cam /= np.maximum(np.linalg.norm(n_cam, axis=-1, keepdims=True), 1e-6)
        # Double-sided faces: a normal pointing away from the viewer belongs to a back face.
        rays = pixel_rays(K)
        backfacing = np.einsum("hwc,hwc->hw", n_cam, rays) > 0
        n_cam[backfacing] *= -1
        n_cam[~mask] = 0
        s = shade(n_cam, mask, lights, ambient)
        bg = np.asarray(background, np.float32)
        color = np.where(mask[..., None], (s * 255.0)[..., None], bg).astype(np.uint8)
        return RenderResult(color, mask, depth.astype(np.float32), n_cam, s, (azimuth, elevation, theta, distance), K)


def turn_normal_map(normals: np.ndarray, phi) -> np.ndarray:
    """The camera-frame normal map of the view at in-plane angle theta + phi, from the one at theta.

    R(a, e, theta + phi) = Rz(phi) R(a, e, theta): the camera turns about its optical axis (the
    principal point is the image centre), so the map turns by phi and every normal by Rz(phi).
    Shading it again with `shade` keeps the lights where they are in the camera frame, which turning
    the grey picture would not. Nearest-neighbour, so normals are never blended; zero (background)
    outside the source. Batched: (..., H, W, 3) maps and phi of shape (...) (or one angle for all),
    degrees.
    """
    normals = np.asarray(normals)
    H, W = normals.shape[-3:-1]
    lead = normals.shape[:-3]
    phi = np.broadcast_to(np.asarray(phi, np.float64), lead)
    c = np.cos(np.deg2rad(phi))[..., None, None]
    s = np.sin(np.deg2rad(phi))[..., None, None]
    x, y = np.meshgrid(np.arange(W, dtype=np.float32) + 0.5 - W / 2.0, -(np.arange(H, dtype=np.float32) + 0.5 - H / 2.0))
    # the source of each output pixel: its point turned back by -phi (camera plane, y up)
    su = np.rint(c * x + s * y + W / 2.0 - 0.5).astype(np.int64)
    sv = np.rint(s * x - c * y + H / 2.0 - 0.5).astype(np.int64)
    inside = (su >= 0) & (su < W) & (sv >= 0) & (sv < H)
    flat = normals.reshape((-1, H * W, 3))
    src = (np.clip(sv, 0, H - 1) * W + np.clip(su, 0, W - 1)).reshape((-1, H * W))
    n = np.take_along_axis(flat, src[..., None], axis=1).reshape(lead + (H, W, 3)).astype(np.float32) * inside[..., None]
    return np.stack([c * n[..., 0] - s * n[..., 1], s * n[..., 0] + c * n[..., 1], n[..., 2]], -1)


def pixel_rays(K: Intrinsics) -> np.ndarray:
    """(H, W, 3) viewing ray of each pixel centre in the camera frame, z = -1 (so p_cam = depth * ray)."""
    u = np.arange(K.width, dtype=np.float32) + 0.5
    v = np.arange(K.height, dtype=np.float32) + 0.5
    uu, vv = np.meshgrid(u, v)
    return np.dstack([(uu - K.cx) / K.fx, -(vv - K.cy) / K.fy, -np.ones_like(uu)])


#: Brightest object grey of :func:`grey_on_white`.  `shade` clips at 1 and the lights add up to more
#: than that, so in `RenderResult.color` a face turned to the key light is as white as the
#: background: measured on library shapes, 21 % of the object's pixels under random rotations
#: (29 % at the index's grid poses), and a third to a half of the views lose over a fifth of
#: their silhouette that way.
OBJECT_MAX_GREY = 215


def grey_on_white(shading: np.ndarray, mask: np.ndarray, object_max: int = OBJECT_MAX_GREY) -> np.ndarray:
    """(H, W) uint8 grey rendering on white whose object pixels all stay darker than the background."""
    return np.where(mask, np.round(np.asarray(shading) * object_max), 255).astype(np.uint8)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x0, y0, x1, y1) box of a silhouette, exclusive max; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def square_box(box: tuple[float, float, float, float], margin: float = 0.1) -> tuple[float, float, float, float]:
    """The square around a box's centre with side max(w, h) * (1 + 2 * margin)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_square(
    image: np.ndarray | Image.Image,
    box: tuple[float, float, float, float],
    size: int,
    margin: float = 0.1,
    fill: tuple[int, ...] = (255, 255, 255),
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Crop the square around `box` (padding outside the image with `fill`) and resize.

    Returns the crop and the square box in the source image's pixels, so a caller
    can map crop pixels back onto the photo.
    """
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    sq = square_box(box, margin)
    out = img.transform((size, size), Image.Transform.EXTENT, sq, resample=Image.Resampling.BILINEAR, fillcolor=fill[: len(img.getbands())] if img.mode != "L" else fill[0])
    return out, sq
