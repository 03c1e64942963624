"""Photos with zero, one or several library objects: the data of the taggers and of Vec2Bundle.

Rendering a whole multi-object scene per sample is slow on a CPU, so objects are rendered once
into a *sprite bank* (photo-like shading from the synthetic generator, cut out by their
silhouette) and scenes are composed from it: a background of the generator's kinds, 0-k sprites
scaled and placed at random (later ones may overlap earlier ones, never hide more than half of
one), then the generator's degradations (colour jitter, blur, noise, JPEG) over the whole image.

Composition is a pure function of (seed, index) and the bank, like the generator's samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from .synthetic import SyntheticConfig, SyntheticGenerator, paste_rgba, sample_rng

#: Sprites: photo-like objects on a plain background, nothing else in the frame.
SPRITE_CONFIG = dict(
    p_clutter=0.0, p_occlusion=0.0, p_truncate=0.0, p_shadow=0.0, p_color_jitter=0.0, p_vignette=0.0,
    p_lowres=0.0, p_blur=0.0, p_noise=0.0, p_jpeg=0.0, background_weights={"plain": 1.0},
)


@dataclass
class SpriteBank:
    """RGBA cut-outs of library objects, `per_shape` of each shape at random poses."""

    rgba: np.ndarray          # (N, S, S, 4) uint8, alpha = silhouette
    boxes: np.ndarray         # (N, 4) float32 tight silhouette boxes (x0, y0, x1, y1)
    shape_ids: np.ndarray     # (N,) int64
    categories: np.ndarray    # (N,) str
    slot: np.ndarray          # (N,) int: which of the shape's sprites (0 .. per_shape - 1)

    def select(self, shape_ids: Sequence[int] | None = None, slots: Sequence[int] | None = None) -> np.ndarray:
        keep = np.ones(len(self.shape_ids), bool)
        if shape_ids is not None:
            keep &= np.isin(self.shape_ids, np.asarray(list(shape_ids), np.int64))
        if slots is not None:
            keep &= np.isin(self.slot, np.asarray(list(slots)))
        return np.nonzero(keep)[0]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, rgba=self.rgba, boxes=self.boxes, shape_ids=self.shape_ids,
                 categories=self.categories.astype(str), slot=self.slot)
        tmp.replace(path)

    def concat(self, other: "SpriteBank") -> "SpriteBank":
        """This bank's rows first (their indices unchanged), then `other`'s; sprites must be the same size."""
        if other.rgba.shape[1:] != self.rgba.shape[1:]:
            raise ValueError(f"sprite sizes differ: {self.rgba.shape[1:]} vs {other.rgba.shape[1:]}")
        if np.isin(other.shape_ids, self.shape_ids).any():
            raise ValueError("the banks share shape ids")
        return SpriteBank(np.concatenate([self.rgba, other.rgba]), np.concatenate([self.boxes, other.boxes]),
                          np.concatenate([self.shape_ids, other.shape_ids]),
                          np.concatenate([self.categories.astype(str), other.categories.astype(str)]),
                          np.concatenate([self.slot, other.slot]))

    @classmethod
    def load(cls, path: Path) -> "SpriteBank":
        with np.load(path) as z:
            return cls(z["rgba"], z["boxes"], z["shape_ids"], z["categories"].astype(str), z["slot"])


def build_sprite_bank(library, shape_ids: Sequence[int], per_shape: int, seed: int = 0, size: int = 96,
                      cache: Path | None = None, progress: bool = True,
                      shape_scale: tuple[float, float] | None = None) -> SpriteBank:
    """Render `per_shape` sprites of every shape (cached in `cache` when given); with `shape_scale`,
    each sprite's mesh stretched per axis by factors drawn from that range (`SyntheticConfig.shape_scale`)."""
    if cache is not None and Path(cache).is_file():
        return SpriteBank.load(Path(cache))
    ids = [int(s) for s in shape_ids]
    cfg = SyntheticConfig(**SPRITE_CONFIG, shape_scale=shape_scale).with_size(size)
    n = len(ids) * per_shape
    rgba = np.zeros((n, size, size, 4), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    sids = np.zeros(n, np.int64)
    cats = np.empty(n, dtype=object)
    slot = np.zeros(n, np.int64)
    with SyntheticGenerator(library, ids, seed, cfg) as gen:
        bar = tqdm(total=n, desc="sprites", disable=not progress)
        for k, sid in enumerate(ids):
            for j in range(per_shape):
                i = k * per_shape + j
                s = gen.make(sid, sample_rng(seed, sid * 100_003 + j))
                alpha = s.mask.astype(np.uint8) * 255
                rgba[i, ..., :3], rgba[i, ..., 3] = s.image, alpha
                boxes[i] = s.box if s.box is not None else (0, 0, size, size)
                sids[i], cats[i], slot[i] = sid, s.category, j
                bar.update()
        bar.close()
    bank = SpriteBank(rgba, boxes, sids, cats.astype(str), slot)
    if cache is not None:
        bank.save(Path(cache))
    return bank


@dataclass(frozen=True)
class SceneConfig:
    size: int = 64
    #: relative weights of the object count (0 = background only)
    counts: dict = field(default_factory=lambda: {0: 0.15, 1: 0.4, 2: 0.3, 3: 0.15})
    #: object size (longest box side / canvas side) for one object, and for several
    single_scale: tuple[float, float] = (0.55, 0.95)
    multi_scale: tuple[float, float] = (0.35, 0.65)
    max_hidden: float = 0.5


class SceneComposer:
    """Composes scenes from a sprite bank with the generator's backgrounds and degradations."""

    def __init__(self, bank: SpriteBank, config: SceneConfig = SceneConfig(), seed: int = 0):
        self.bank, self.config, self.seed = bank, config, int(seed)
        # The generator is only used for its background and degradation code (no rendering).
        self._gen = SyntheticGenerator.__new__(SyntheticGenerator)
        self._gen.config = SyntheticConfig().with_size(config.size)
        from .synthetic import _PhotoPool

        self._gen._photos = _PhotoPool(None)

    def draw_count(self, rng: np.random.Generator) -> int:
        counts, w = zip(*self.config.counts.items())
        w = np.asarray(w, float)
        return int(rng.choice(np.asarray(counts), p=w / w.sum()))

    def compose(self, sprite_rows: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        """An image with the given sprites (drawn in order); returns the image and the rows that
        stayed visible (an object hidden by more than `max_hidden` of its pixels is dropped)."""
        S = self.config.size
        img, _ = self._gen._background(rng, S, S)
        img = img.astype(np.float32)
        owner = np.full((S, S), -1, np.int64)
        scale = self.config.single_scale if len(sprite_rows) <= 1 else self.config.multi_scale
        areas = {}
        for k, row in enumerate(sprite_rows):
            x0, y0, x1, y1 = self.bank.boxes[row]
            x0, y0 = int(np.floor(x0)), int(np.floor(y0))
            x1, y1 = max(int(np.ceil(x1)), x0 + 1), max(int(np.ceil(y1)), y0 + 1)
            patch = self.bank.rgba[row, y0:y1, x0:x1]
            side = float(rng.uniform(*scale)) * S
            f = side / max(patch.shape[0], patch.shape[1])
            w, h = max(2, int(round(patch.shape[1] * f))), max(2, int(round(patch.shape[0] * f)))
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            p = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((w, h), Image.BILINEAR), np.float32) / 255.0
            px = int(rng.integers(-w // 6, max(S - w + w // 6, -w // 6 + 1)))
            py = int(rng.integers(-h // 6, max(S - h + h // 6, -h // 6 + 1)))
            pasted = paste_rgba(img, p, px, py)
            if pasted is None:
                continue
            rows, cols, a = pasted
            cover = a >= 0.5
            owner[rows, cols][cover] = k
            areas[k] = int(cover.sum())
        kept = [sprite_rows[k] for k, area in areas.items()
                if area > 0 and (owner == k).sum() >= (1 - self.config.max_hidden) * area]
        out = self._gen._degrade(rng, img, {})
        return out, kept

    def scene(self, index: int, pools: dict[str, np.ndarray], mix: dict[str, float], count: int | None = None
              ) -> tuple[np.ndarray, list[int]]:
        """Scene `index`: each object is drawn from a pool (rows of the bank) chosen by `mix` weights."""
        rng = sample_rng(self.seed, index)
        n = self.draw_count(rng) if count is None else int(count)
        names = [k for k in mix if len(pools.get(k, ())) and mix[k] > 0]
        w = np.asarray([mix[k] for k in names], float)
        rows = []
        for _ in range(n if names else 0):
            pool = pools[names[int(rng.choice(len(names), p=w / w.sum()))]]
            rows.append(int(pool[int(rng.integers(len(pool)))]))
        return self.compose(rows, rng)


def scene_set(composer: SceneComposer, n: int, pools: dict[str, np.ndarray], mix: dict[str, float],
              count: int | None = None, start: int = 0, desc: str = "scenes", progress: bool = True
              ) -> tuple[np.ndarray, list[list[int]]]:
    """n composed scenes (uint8 images) and the visible sprite rows of each."""
    S = composer.config.size
    images = np.zeros((n, S, S, 3), np.uint8)
    rows: list[list[int]] = []
    for i in tqdm(range(n), desc=desc, disable=not progress):
        images[i], kept = composer.scene(start + i, pools, mix, count)
        rows.append(kept)
    return images, rows
