"""Rendering-stream codes of every indexed view, per shape, keyed by (views, weights).

The rendering stream does not depend on the query, so each view's code
`W_r r + b` (see models.matching) is computed once when a shape is indexed and
stored as float16; a query only runs the photo stream and the fusion head.

Codes are a cache of what the view index and the weights determine: each file is written
atomically with a SHA-256 inside (`index.encode_checked`); a damaged one is logged, removed and
computed again (rendering the shape again too when its views are damaged). When the folder cannot
be written, the codes are still computed and kept in memory, so search keeps working, and the
cause is logged.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic import IndexWriteError, atomic_write, record_write_error, remove_quietly
from .index import ViewIndex, decode_checked, encode_checked

log = logging.getLogger(__name__)


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(N, S, S) uint8 grey renderings on white -> (N, 1, S, S) float in [-0.5, 0.5]."""
    return torch.from_numpy(np.array(crops, dtype=np.uint8, copy=True)).float().div_(255.0).sub_(0.5).unsqueeze(1)


class FeatureIndex:
    def __init__(self, views: ViewIndex, model, weights_key: str, device: str = "cpu", batch: int = 256):
        self.views = views
        self.model = model
        self.device = device
        self.batch = batch
        self.weights_key = weights_key
        self.key = f"{views.config.key}-{weights_key}"
        self.root = views.root.parent / f"codes-{self.key}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # codes are then kept in memory only
            log.error("%s", IndexWriteError("codes", self.root, exc))
        self._cache: dict[int, torch.Tensor] = {}

    def path(self, shape_id: int) -> Path:
        return self.root / f"shape-{shape_id}.npz"

    def legacy_path(self, shape_id: int) -> Path:
        """The first format: a bare .npy with its SHA-256 in a .sha256 file beside it (still read)."""
        return self.root / f"shape-{shape_id}.npy"

    @torch.no_grad()
    def compute(self, crops: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(crops), self.batch):
            x = crops_to_tensor(crops[i : i + self.batch]).to(self.device)
            out.append(self.model.render_codes(x).half().cpu())
        return torch.cat(out).numpy()

    def build(self, shape_id: int) -> torch.Tensor:
        """Compute one shape's codes from its (verified, if need be re-rendered) views and store them.

        A failed write is logged and the codes are kept in memory: they can always be made again."""
        codes = self.compute(self.views.load(shape_id, rebuild=True).crops)
        data = encode_checked({"shape_id": int(shape_id), "key": self.key}, {"codes": codes}, compress=False)
        try:
            atomic_write(self.path(shape_id), data)
        except OSError as exc:
            err = IndexWriteError("codes", self.root, exc)
            record_write_error(err)
            log.error("shape %s: %s (kept in memory)", shape_id, err)
        else:
            remove_quietly(self.legacy_path(shape_id), self.legacy_path(shape_id).with_suffix(".sha256"))
        self._cache[shape_id] = torch.from_numpy(codes)
        return self._cache[shape_id]

    def _read(self, shape_id: int) -> np.ndarray | None:
        """The stored codes, verified; None when absent or damaged (a damaged file is removed)."""
        path, legacy = self.path(shape_id), self.legacy_path(shape_id)
        try:
            if path.is_file():
                meta, a = decode_checked(path.read_bytes(), ("codes",))
                if meta.get("shape_id") != shape_id or meta.get("key") != self.key:
                    raise ValueError(f"it belongs to shape {meta.get('shape_id')} / codes {meta.get('key')}")
                codes = a["codes"]
            elif legacy.is_file():
                data, digest = legacy.read_bytes(), legacy.with_suffix(".sha256")
                if not digest.is_file() or digest.read_text().strip() != hashlib.sha256(data).hexdigest():
                    raise ValueError("checksum missing or different (old format)")
                codes = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                return None
            n = len(self.views.config.grid)
            if codes.dtype != np.float16 or codes.ndim != 2 or codes.shape[0] != n:
                raise ValueError(f"codes of the wrong shape {codes.shape} / type {codes.dtype} for {n} views")
            return codes
        except (ValueError, OSError) as exc:
            log.warning("codes of shape %s are damaged (%s): removed; they are computed again", shape_id, exc)
            self._remove_files(shape_id)
            return None

    def codes(self, shape_id: int) -> torch.Tensor:
        """(V, D) float16 codes of one shape, built on first use and verified on load."""
        if shape_id in self._cache:
            return self._cache[shape_id]
        codes = self._read(shape_id)
        if codes is None:
            return self.build(shape_id)
        self._cache[shape_id] = torch.from_numpy(codes)
        return self._cache[shape_id]

    def _remove_files(self, shape_id: int) -> None:
        legacy = self.legacy_path(shape_id)
        remove_quietly(self.path(shape_id), legacy, legacy.with_suffix(".sha256"))

    def remove(self, shape_id: int) -> None:
        self._cache.pop(shape_id, None)
        self._remove_files(shape_id)

    def sync(self, shape_ids: list[int], progress: bool = True) -> None:
        for sid in list(self._cache):
            if sid not in shape_ids:
                self.remove(sid)
        for sid in tqdm(shape_ids, desc="view codes", unit="shape", disable=not progress):
            self.codes(sid)

    def bytes_per_view(self) -> int:
        return 2 * self.model.code_dim
