"""Pose mathematics for the shape search (pure, batched torch functions).

Conventions (fixed by the contract; renderer, index and matcher rely on them):

* Library frame: right-handed, +z up, the object's front faces -y.
* A pose is (azimuth a, elevation e, in-plane theta, distance d), radians here.
  The camera centre is ``C = d * (cos e sin a, -cos e cos a, sin e)``.
* The camera looks along its -z axis with +y up in the image (OpenGL / pyrender).
  World -> camera rotation ``R(a, e, theta) = Rz(theta) @ Rx(e - pi/2) @ Rz(-a)``,
  and a library point X sits at ``R @ (X - C)`` in camera coordinates.
* API ranges: a in [0, 2pi), e in [-pi/2, pi/2], theta in [-pi, pi).
* Quaternions are (w, x, y, z), active (``q v q*``), canonical with w >= 0.

All functions accept any leading batch dimensions, work in float32 and float64 and
are differentiable away from genuine singularities (identity / half turns for
distances, the gimbal poles for Euler angles).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "deg2rad",
    "rad2deg",
    "hat",
    "vee",
    "euler_to_matrix",
    "matrix_to_euler",
    "camera_center",
    "camera_extrinsics",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "standardize_quaternion",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "so3_log",
    "geodesic_distance",
    "geodesic_distance_log",
    "random_rotations",
    "rotations_at_distance",
    "stratified_rotations",
]

TWO_PI = 2.0 * math.pi
HALF_PI = 0.5 * math.pi


# --------------------------------------------------------------------------- helpers


def _as_tensors(*xs: Tensor | float) -> list[Tensor]:
    """Lets callers mix tensors and Python numbers; the first tensor sets dtype/device."""
    ref = next((x for x in xs if isinstance(x, Tensor)), None)
    if ref is None:
        dtype, device = torch.get_default_dtype(), None
    else:
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        device = ref.device
    ts = [torch.as_tensor(x, dtype=dtype, device=device) for x in xs]
    return list(torch.broadcast_tensors(*ts))


def _safe_norm(v: Tensor, dim: int = -1) -> Tensor:
    """Euclidean norm whose gradient is 0 (not NaN) at the zero vector."""
    n2 = (v * v).sum(dim)
    pos = n2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, n2, torch.ones_like(n2))), torch.zeros_like(n2))


def _sinc(x: Tensor) -> Tensor:
    """sin(x)/x, with a Taylor branch so value and gradient stay exact near 0."""
    x2 = x * x
    small = x2 < 1e-4  # |x| < 1e-2: the x^6 series error is < 1e-19
    taylor = 1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0))
    xs = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, taylor, torch.sin(xs) / xs)


def _wrap_0_2pi(a: Tensor) -> Tensor:
    """Maps to [0, 2pi); the extra ``where`` undoes rounding of tiny negatives to 2pi."""
    a = torch.remainder(a, TWO_PI)
    return torch.where(a >= TWO_PI, a - TWO_PI, a)


def _wrap_pi(t: Tensor) -> Tensor:
    """Maps to [-pi, pi); atan2 may return +pi, which the contract spells -pi."""
    t = torch.remainder(t + math.pi, TWO_PI) - math.pi
    return torch.where(t >= math.pi, t - TWO_PI, t)


def deg2rad(x: Tensor | float) -> Tensor:
    """Degrees live only at the API edge (the pose grid); the maths runs in radians."""
    return torch.deg2rad(_as_tensors(x)[0])


def rad2deg(x: Tensor | float) -> Tensor:
    """Back to the contract's degrees for reporting."""
    return torch.rad2deg(_as_tensors(x)[0])


def hat(v: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) skew matrix, so that ``hat(v) @ u == cross(v, u)``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape[:-1] + (3, 3))


def vee(K: Tensor) -> Tensor:
    """Inverse of :func:`hat`; averages the two halves so near-skew input is projected."""
    return 0.5 * torch.stack(
        [K[..., 2, 1] - K[..., 1, 2], K[..., 0, 2] - K[..., 2, 0], K[..., 1, 0] - K[..., 0, 1]], dim=-1
    )


# --------------------------------------------------------------------------- Euler / camera


def euler_to_matrix(azimuth: Tensor | float, elevation: Tensor | float, theta: Tensor | float) -> Tensor:
    """World -> camera rotation ``Rz(theta) @ Rx(e - pi/2) @ Rz(-a)``, shape (..., 3, 3).

    Written out in closed form (one stack, no matmuls); the third row is the unit
    direction from the object to the camera, which is what makes the camera's -z
    axis look at the library origin.
    """
    a, e, t = _as_tensors(azimuth, elevation, theta)
    ca, sa = torch.cos(a), torch.sin(a)
    ce, se = torch.cos(e), torch.sin(e)
    ct, st = torch.cos(t), torch.sin(t)
    rows = [
        ct * ca + st * se * sa, ct * sa - st * se * ca, -st * ce,
        st * ca - ct * se * sa, st * sa + ct * se * ca, ct * ce,
        ce * sa, -ce * ca, se,
    ]
    return torch.stack(rows, dim=-1).reshape(a.shape + (3, 3))


def matrix_to_euler(R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`euler_to_matrix`: (azimuth in [0, 2pi), elevation in [-pi/2, pi/2], theta in [-pi, pi)).

    Elevation comes from atan2 of the last row, not asin, so it keeps full precision
    near the poles.  Theta is read from ``R @ Rz(a)`` with the azimuth actually
    returned, so the triple always reconstructs R even where a itself is
    ill-conditioned (close to the poles).

    Gimbal lock: when the camera is (numerically) on the z axis,
    ``hypot(R[2,0], R[2,1]) <= 4 * eps(dtype)``, azimuth and theta are not
    separable.  We then return elevation exactly +-pi/2, azimuth 0 and put the whole
    in-plane rotation into theta.  This is deterministic and the result still maps
    back to R.
    """
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    h = _safe_norm(torch.stack([r20, r21], dim=-1))
    gimbal = h <= 4.0 * torch.finfo(R.dtype).eps

    pole = torch.where(r22 >= 0, torch.full_like(r22, HALF_PI), torch.full_like(r22, -HALF_PI))
    elevation = torch.where(gimbal, pole, torch.atan2(r22, h))

    # Substitute harmless atan2 arguments at the poles so no NaN gradient leaks through.
    y = torch.where(gimbal, torch.zeros_like(r20), r20)
    x = torch.where(gimbal, torch.ones_like(r21), -r21)
    azimuth = _wrap_0_2pi(torch.atan2(y, x))

    ca, sa = torch.cos(azimuth), torch.sin(azimuth)
    theta = torch.atan2(R[..., 1, 0] * ca + R[..., 1, 1] * sa, R[..., 0, 0] * ca + R[..., 0, 1] * sa)
    return azimuth, elevation, _wrap_pi(theta)


def camera_center(azimuth: Tensor | float, elevation: Tensor | float, distance: Tensor | float) -> Tensor:
    """Camera position in the library frame, (..., 3); a=e=0 puts it on -y, facing the front."""
    a, e, d = _as_tensors(azimuth, elevation, distance)
    ce = torch.cos(e)
    return d[..., None] * torch.stack([ce * torch.sin(a), -ce * torch.cos(a), torch.sin(e)], dim=-1)


def camera_extrinsics(
    azimuth: Tensor | float, elevation: Tensor | float, theta: Tensor | float, distance: Tensor | float
) -> Tensor:
    """World -> camera 4x4 ``[R | -R C; 0 0 0 1]`` (invert it for pyrender's camera pose)."""
    a, e, t, d = _as_tensors(azimuth, elevation, theta, distance)
    R = euler_to_matrix(a, e, t)
    C = camera_center(a, e, d)
    top = torch.cat([R, -(R @ C[..., None])], dim=-1)
    bottom = torch.zeros(a.shape + (1, 4), dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


# --------------------------------------------------------------------------- quaternions


def standardize_quaternion(q: Tensor) -> Tensor:
    """q and -q are the same rotation; w >= 0 makes the representation unique (bar w == 0)."""
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """(w, x, y, z) -> (..., 3, 3).  Divides by |q|^2, so unnormalised input is fine."""
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    m = [
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ]
    return torch.stack(m, dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Canonical (w >= 0) unit quaternion of R, (..., 4).

    Shepperd's method: of 4w^2, 4x^2, 4y^2, 4z^2 (their sum is 4, so the largest is
    >= 1) we take the square root of the largest and get the other components from
    off-diagonal sums/differences, never dividing by a small number.  All four
    candidates are computed (with a clamped divisor) and one is picked per element,
    which keeps it batched, branch-free and NaN-free, also in the gradient.
    """
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    t = torch.stack(
        [
            1 + m00 + m11 + m22,  # 4 w^2
            1 + m00 - m11 - m22,  # 4 x^2
            1 - m00 + m11 - m22,  # 4 y^2
            1 - m00 - m11 + m22,  # 4 z^2
        ],
        dim=-1,
    )
    d21, d02, d10 = m21 - m12, m02 - m20, m10 - m01  # 4wx, 4wy, 4wz
    s10, s02, s21 = m10 + m01, m02 + m20, m21 + m12  # 4xy, 4xz, 4yz
    cand = torch.stack(
        [
            torch.stack([t[..., 0], d21, d02, d10], dim=-1),
            torch.stack([d21, t[..., 1], s10, s02], dim=-1),
            torch.stack([d02, s10, t[..., 2], s21], dim=-1),
            torch.stack([d10, s02, s21, t[..., 3]], dim=-1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4 components)
    cand = cand / (2.0 * torch.sqrt(t.clamp(min=0.1)))[..., None]
    idx = t.argmax(dim=-1)[..., None, None].expand(t.shape[:-1] + (1, 4))
    q = cand.gather(-2, idx).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return standardize_quaternion(q)


# --------------------------------------------------------------------------- axis-angle / log


def axis_angle_to_matrix(v: Tensor) -> Tensor:
    """exp(hat(v)) by Rodrigues, v = angle * axis, (..., 3) -> (..., 3, 3).

    Uses ``(1 - cos t)/t^2 = sinc(t/2)^2 / 2`` to avoid the cancellation in
    ``1 - cos t`` and a series sinc, so it is exact and differentiable at v = 0.
    """
    t = _safe_norm(v)
    a = _sinc(t)
    b = 0.5 * _sinc(0.5 * t) ** 2
    K = hat(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """log map as a vector, angle in [0, pi], (..., 3, 3) -> (..., 3).

    Goes through the canonical quaternion: angle = 2 atan2(|v|, w) is accurate at
    both ends (unlike arccos of the trace), and v * angle / |v| = v * 2 / sinc(angle/2)
    has no 0/0 at the identity.  At exactly pi the sign of the axis is arbitrary.
    """
    q = matrix_to_quaternion(R)
    w, xyz = q[..., 0], q[..., 1:]
    half = torch.atan2(_safe_norm(xyz), w)
    return xyz * (2.0 / _sinc(half))[..., None]


def so3_log(R: Tensor) -> Tensor:
    """Matrix logarithm of a rotation as a skew matrix (principal branch, angle <= pi)."""
    return hat(matrix_to_axis_angle(R))


# --------------------------------------------------------------------------- distances


def geodesic_distance(R1: Tensor, R2: Tensor) -> Tensor:
    """Angle of R1^T R2 in [0, pi]: equals ``arccos((tr(R1^T R2) - 1) / 2)``.

    Computed as atan2(sin, cos) with sin from the antisymmetric part and cos from
    the trace.  arccos loses half the digits near 0 and pi (its slope blows up);
    atan2 stays at machine precision everywhere, needs no clamp and its gradient is
    finite (0 at the non-smooth points 0 and pi).
    """
    Rrel = R1.transpose(-1, -2) @ R2
    cos = 0.5 * (Rrel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    sin = _safe_norm(vee(Rrel))
    return torch.atan2(sin, cos)


def geodesic_distance_log(R1: Tensor, R2: Tensor) -> Tensor:
    """``||log(R1^T R2)||_F / sqrt(2)``: an independent route to the same number, for cross-checks."""
    L = so3_log(R1.transpose(-1, -2) @ R2)
    return torch.linalg.matrix_norm(L) / math.sqrt(2.0)


# --------------------------------------------------------------------------- sampling


def _gen_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | None:
    """Random numbers must be drawn on the generator's device."""
    return generator.device if generator is not None else (torch.device(device) if device is not None else None)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """n rotations uniform (Haar) on SO(3), (n, 3, 3).

    A standard Gaussian in R^4 is isotropic, so its direction is uniform on S^3,
    and the double cover S^3 -> SO(3) pushes that to the Haar measure.
    """
    dtype = dtype or torch.get_default_dtype()
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=_gen_device(generator, device))
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
    out = quaternion_to_matrix(q)
    return out.to(device) if device is not None else out


def _random_unit_vectors(shape: Sequence[int], generator, dtype, device) -> Tensor:
    v = torch.randn(tuple(shape) + (3,), generator=generator, dtype=dtype, device=_gen_device(generator, device))
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp(min=1e-12)
    return v.to(device)


def rotations_at_distance(
    R_ref: Tensor, angles: Tensor | float, generator: torch.Generator | None = None
) -> Tensor:
    """``R_ref @ exp(angle * axis)`` with a uniform random axis per element.

    R_ref (..., 3, 3) and angles (...) broadcast against each other (use
    ``R_ref[..., None, :, :]`` with angles (..., k) for k samples per reference).
    The geodesic distance to R_ref is exactly the angle for angles in [0, pi];
    other angles give the distance of the wrapped angle.
    """
    angles = torch.as_tensor(angles, dtype=R_ref.dtype, device=R_ref.device)
    shape = torch.broadcast_shapes(R_ref.shape[:-2], angles.shape)
    axis = _random_unit_vectors(shape, generator, R_ref.dtype, R_ref.device)
    return R_ref @ axis_angle_to_matrix(axis * angles[..., None])


def _band_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding: counts sum to n exactly and are deterministic."""
    f = [max(float(x), 0.0) for x in fractions]
    total = sum(f)
    if total <= 0:
        raise ValueError("fractions must have a positive sum")
    raw = [n * x / total for x in f]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(f)), key=lambda i: (raw[i] - counts[i], -i), reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _haar_angle_cdf(t: Tensor) -> Tensor:
    """Unnormalised CDF of the rotation angle of a Haar rotation (density (1 - cos t)/pi)."""
    return t - torch.sin(t)


def _haar_angles_in(lo: float, hi: float, u: Tensor) -> Tensor:
    """Inverse-CDF sample of the Haar angle density restricted to [lo, hi], by bisection.

    ``t - sin t`` has no closed-form inverse and Newton stalls where its slope
    vanishes (t -> 0), whereas bisection is monotone, batched and converges to the
    dtype's precision in a fixed number of steps.
    """
    flo = _haar_angle_cdf(torch.tensor(lo, dtype=u.dtype, device=u.device))
    fhi = _haar_angle_cdf(torch.tensor(hi, dtype=u.dtype, device=u.device))
    target = flo + u * (fhi - flo)
    a = torch.full_like(u, lo)
    b = torch.full_like(u, hi)
    for _ in range(60 if u.dtype == torch.float64 else 30):
        m = 0.5 * (a + b)
        below = _haar_angle_cdf(m) < target
        a = torch.where(below, m, a)
        b = torch.where(below, b, m)
    return 0.5 * (a + b)


def stratified_rotations(
    R_ref: Tensor,
    n: int = 30,
    generator: torch.Generator | None = None,
    near: tuple[float, float] = (0.0, math.radians(10.0)),
    close: tuple[float, float] = (math.radians(10.0), math.radians(45.0)),
    far: tuple[float, float] = (math.radians(45.0), math.pi),
    fractions: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
) -> tuple[Tensor, Tensor]:
    """Training partners for R_ref, stratified by geodesic distance (bands in radians).

    Returns rotations (..., n, 3, 3) and their exact distances to R_ref (..., n),
    ordered near, close, far; the counts per band are n * fractions rounded by
    largest remainder.  A distance regressor needs many small angles (uniform
    SO(3) sampling almost never produces them: P(angle < 10deg) ~ 6e-4), hence
    near/close draw the angle uniformly in their band.  The far band instead draws
    the angle from the Haar density (1 - cos t)/pi truncated to the band, with a
    uniform axis, so its rotations are exactly uniform on SO(3) restricted to that
    shell: the network then sees "far" as it meets it among random poses, with the
    mass near pi rather than near the shell's inner edge.
    """
    batch = R_ref.shape[:-2]
    dtype, device = R_ref.dtype, R_ref.device
    gdev = _gen_device(generator, device)
    parts = []
    for k, (lo, hi), haar in zip(_band_counts(n, fractions), (near, close, far), (False, False, True)):
        if k == 0:
            continue
        lo, hi = float(lo), float(hi)
        if not 0.0 <= lo <= hi <= math.pi:
            raise ValueError(f"band ({lo}, {hi}) must satisfy 0 <= lo <= hi <= pi")
        u = torch.rand(batch + (k,), generator=generator, dtype=dtype, device=gdev).to(device)
        parts.append(_haar_angles_in(lo, hi, u) if haar else lo + u * (hi - lo))
    if parts:
        angles = torch.cat(parts, dim=-1)
    else:
        angles = torch.zeros(batch + (0,), dtype=dtype, device=device)
    rots = rotations_at_distance(R_ref[..., None, :, :], angles, generator=generator)
    return rots, angles
