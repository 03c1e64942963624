"""Pinhole camera of the contract: pose (a, e, theta, d) -> R, C, and pixel projection.

Image coordinates: u to the right, v downwards, pixel (0, 0)'s top-left corner at
(0, 0); the camera looks along its -z axis with +y up (OpenGL/pyrender).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models import geometry


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def fitting_unit_sphere(cls, width: int, height: int, distance: float, margin: float = 1.05) -> "Intrinsics":
        """A focal length that keeps a radius-1 object at `distance` fully in view."""
        half = math.asin(min(1.0, margin / distance)) if distance > margin else math.radians(60)
        f = 0.5 * min(width, height) / math.tan(half)
        return cls(width, height, f, f, width / 2.0, height / 2.0)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)


def rotation(azimuth: float, elevation: float, theta: float) -> np.ndarray:
    """R(a, e, theta) of the contract from degrees, as a (3, 3) float64 array."""
    t = torch.tensor([azimuth, elevation, theta], dtype=torch.float64).deg2rad()
    return geometry.euler_to_matrix(t[0], t[1], t[2]).numpy()


def center(azimuth: float, elevation: float, distance: float) -> np.ndarray:
    t = torch.tensor([azimuth, elevation], dtype=torch.float64).deg2rad()
    return geometry.camera_center(t[0], t[1], torch.tensor(float(distance), dtype=torch.float64)).numpy()


def camera_to_world(azimuth: float, elevation: float, theta: float, distance: float) -> np.ndarray:
    """The 4x4 pose pyrender wants for its camera node (inverse of the extrinsics)."""
    pose = np.eye(4)
    pose[:3, :3] = rotation(azimuth, elevation, theta).T
    pose[:3, 3] = center(azimuth, elevation, distance)
    return pose


def world_to_camera_points(points: np.ndarray, azimuth: float, elevation: float, theta: float, distance: float) -> np.ndarray:
    R = rotation(azimuth, elevation, theta)
    C = center(azimuth, elevation, distance)
    return (np.asarray(points, dtype=np.float64) - C) @ R.T


def project(points: np.ndarray, azimuth: float, elevation: float, theta: float, distance: float, K: Intrinsics) -> np.ndarray:
    """(N, 3) library-frame points -> (N, 2) pixel coordinates (u, v)."""
    p = world_to_camera_points(points, azimuth, elevation, theta, distance)
    z = -p[:, 2]
    if np.any(z <= 0):
        raise ValueError("points behind the camera")
    u = K.cx + K.fx * p[:, 0] / z
    v = K.cy - K.fy * p[:, 1] / z
    return np.stack([u, v], axis=1)
