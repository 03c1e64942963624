"""The pose grid of the contract: 21 azimuth x 11 elevation x 11 in-plane bins.

Angles are in degrees here because the grid is part of the API contract; the
geometry code converts to radians.  Other bin counts give finer or coarser grids
with the same layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PoseGrid:
    n_azimuth: int = 21
    n_elevation: int = 11
    n_theta: int = 11

    def __len__(self) -> int:
        return self.n_azimuth * self.n_elevation * self.n_theta

    @property
    def key(self) -> str:
        """Identifies the grid in index hashes."""
        return f"grid-{self.n_azimuth}x{self.n_elevation}x{self.n_theta}"

    def bin_centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = (np.arange(self.n_azimuth) + 0.5) * 360.0 / self.n_azimuth
        e = -90.0 + (np.arange(self.n_elevation) + 0.5) * 180.0 / self.n_elevation
        t = -180.0 + (np.arange(self.n_theta) + 0.5) * 360.0 / self.n_theta
        return a, e, t

    def index(self, i: np.ndarray | int, j: np.ndarray | int, k: np.ndarray | int) -> np.ndarray:
        """Pose index = (i * n_e + j) * n_t + k (the contract's formula)."""
        return (np.asarray(i) * self.n_elevation + np.asarray(j)) * self.n_theta + np.asarray(k)

    def bins(self, index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = np.asarray(index)
        if np.any((index < 0) | (index >= len(self))):
            raise IndexError(f"pose index out of range 0..{len(self) - 1}")
        k = index % self.n_theta
        j = (index // self.n_theta) % self.n_elevation
        i = index // (self.n_theta * self.n_elevation)
        return i, j, k

    def poses(self, index: np.ndarray | int | None = None) -> np.ndarray:
        """(..., 3) array of (azimuth, elevation, theta) in degrees; all poses when index is None."""
        if index is None:
            index = np.arange(len(self))
        i, j, k = self.bins(index)
        a, e, t = self.bin_centres()
        return np.stack([a[i], e[j], t[k]], axis=-1)

    def nearest_index(self, azimuth, elevation, theta) -> np.ndarray:
        """The bin containing a pose (degrees), e.g. to score precision@k by pose bin."""
        a = np.mod(np.asarray(azimuth, dtype=float), 360.0)
        e = np.clip(np.asarray(elevation, dtype=float), -90.0, 90.0)
        t = np.mod(np.asarray(theta, dtype=float) + 180.0, 360.0) - 180.0
        i = np.minimum((a / (360.0 / self.n_azimuth)).astype(int), self.n_azimuth - 1)
        j = np.minimum(((e + 90.0) / (180.0 / self.n_elevation)).astype(int), self.n_elevation - 1)
        k = np.minimum(((t + 180.0) / (360.0 / self.n_theta)).astype(int), self.n_theta - 1)
        return self.index(i, j, k)


DEFAULT_GRID = PoseGrid()
