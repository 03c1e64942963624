"""Training pairs for the matching network: a photo and ~30 grid renderings, stratified by distance."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shape_library.grid import PoseGrid

from . import geometry


def grid_rotations(grid: PoseGrid) -> torch.Tensor:
    p = torch.from_numpy(grid.poses()).double().deg2rad()
    return geometry.euler_to_matrix(p[:, 0], p[:, 1], p[:, 2]).float()


def pose_rotations(poses_deg: np.ndarray) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(poses_deg)[:, :3], dtype=torch.float64).deg2rad()
    return geometry.euler_to_matrix(p[:, 0], p[:, 1], p[:, 2]).float()


@dataclass(frozen=True)
class PairSampling:
    near: int = 10            # distance < near_deg: the nearest bins
    close: int = 10           # near_deg .. close_deg
    far: int = 6              # beyond close_deg
    other_shape: int = 4      # renderings of another shape of the same category
    near_deg: float = 20.0
    close_deg: float = 60.0
    mismatch_penalty_deg: float = 20.0  # added to the target of another shape's rendering

    @property
    def per_photo(self) -> int:
        return self.near + self.close + self.far + self.other_shape


def sample_pairs(
    photo_rot: torch.Tensor,          # (B, 3, 3)
    photo_shape: np.ndarray,          # (B,) shape ids
    grid_rot: torch.Tensor,           # (V, 3, 3)
    same_category: dict[int, list[int]],
    rng: np.random.Generator,
    cfg: PairSampling = PairSampling(),
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """For each photo: (shape id, pose index) of its renderings and the regression targets (radians).

    Targets are the geodesic distance between the photo's and the rendering's
    rotations; a rendering of a different shape gets that distance plus a penalty,
    so the score also ranks shapes (capped at pi).
    """
    B, V = len(photo_rot), len(grid_rot)
    d = geometry.geodesic_distance(photo_rot[:, None], grid_rot[None]).numpy()  # (B, V)
    near_r, close_r = np.radians(cfg.near_deg), np.radians(cfg.close_deg)
    n = cfg.per_photo
    shapes = np.zeros((B, n), np.int64)
    poses = np.zeros((B, n), np.int64)
    targets = np.zeros((B, n), np.float32)
    for b in range(B):
        row = d[b]
        bands = [np.nonzero(row < near_r)[0], np.nonzero((row >= near_r) & (row < close_r))[0], np.nonzero(row >= close_r)[0]]
        picks = []
        for idx, count in zip(bands, (cfg.near, cfg.close, cfg.far)):
            if len(idx) == 0:
                idx = np.argsort(row)[: max(count, 1)]
            picks.append(rng.choice(idx, count, replace=len(idx) < count))
        other_poses = rng.integers(0, V, cfg.other_shape)
        # half of the other-shape renderings at the photo's nearest pose: shape, not pose, differs
        other_poses[: cfg.other_shape // 2] = np.argmin(row)
        picks.append(other_poses)
        p = np.concatenate(picks)
        own = int(photo_shape[b])
        others = [s for s in same_category.get(own, []) if s != own] or [own]
        s = np.full(n, own)
        s[n - cfg.other_shape :] = rng.choice(others, cfg.other_shape)
        t = row[p].astype(np.float32)
        mismatch = s != own
        t[mismatch] = np.minimum(np.pi, t[mismatch] + np.radians(cfg.mismatch_penalty_deg))
        shapes[b], poses[b], targets[b] = s, p, t
    return shapes, poses, torch.from_numpy(targets)
