"""Rendering-stream codes of every indexed view, per shape, keyed by (views, weights).

The rendering stream does not depend on the query, so each view's code
`W_r r + b` (see models.matching) is computed once when a shape is indexed and
stored as float16; a query only runs the photo stream and the fusion head.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .index import ViewIndex
from .library import atomic_write


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(N, S, S) uint8 grey renderings on white -> (N, 1, S, S) float in [-0.5, 0.5]."""
    return torch.from_numpy(np.array(crops, dtype=np.uint8, copy=True)).float().div_(255.0).sub_(0.5).unsqueeze(1)


class FeatureIndex:
    def __init__(self, views: ViewIndex, model, weights_key: str, device: str = "cpu", batch: int = 256):
        self.views = views
        self.model = model
        self.device = device
        self.batch = batch
        self.key = f"{views.config.key}-{weights_key}"
        self.root = views.root.parent / f"codes-{self.key}"
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[int, torch.Tensor] = {}

    def path(self, shape_id: int) -> Path:
        return self.root / f"shape-{shape_id}.npy"

    @torch.no_grad()
    def compute(self, crops: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(crops), self.batch):
            x = crops_to_tensor(crops[i : i + self.batch]).to(self.device)
            out.append(self.model.render_codes(x).half().cpu())
        return torch.cat(out).numpy()

    def build(self, shape_id: int) -> torch.Tensor:
        codes = self.compute(self.views.load(shape_id).crops)
        buf = io.BytesIO()
        np.save(buf, codes)
        data = buf.getvalue()
        atomic_write(self.path(shape_id), data)
        atomic_write(self.path(shape_id).with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
        self._cache[shape_id] = torch.from_numpy(codes)
        return self._cache[shape_id]

    def codes(self, shape_id: int) -> torch.Tensor:
        """(V, D) float16 codes of one shape, built on first use and verified on load."""
        if shape_id in self._cache:
            return self._cache[shape_id]
        path = self.path(shape_id)
        if path.is_file():
            data = path.read_bytes()
            digest = path.with_suffix(".sha256")
            if digest.is_file() and digest.read_text().strip() == hashlib.sha256(data).hexdigest():
                self._cache[shape_id] = torch.from_numpy(np.load(io.BytesIO(data)))
                return self._cache[shape_id]
        return self.build(shape_id)

    def remove(self, shape_id: int) -> None:
        self._cache.pop(shape_id, None)
        self.path(shape_id).unlink(missing_ok=True)
        self.path(shape_id).with_suffix(".sha256").unlink(missing_ok=True)

    def sync(self, shape_ids: list[int], progress: bool = True) -> None:
        for sid in list(self._cache):
            if sid not in shape_ids:
                self.remove(sid)
        for sid in tqdm(shape_ids, desc="view codes", unit="shape", disable=not progress):
            self.codes(sid)

    def bytes_per_view(self) -> int:
        return 2 * self.model.code_dim
