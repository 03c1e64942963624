"""Property and contract tests for models.geometry."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from models import geometry as G

F64 = torch.float64
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}
FAST = settings(max_examples=60, deadline=None)

azimuths = st.floats(0.0, 2 * math.pi, exclude_max=True)
elevations = st.floats(-math.pi / 2, math.pi / 2)
thetas = st.floats(-math.pi, math.pi, exclude_max=True)
unit_quats = st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: sum(c * c for c in q) > 1e-3)


def t64(*xs):
    return [torch.tensor(x, dtype=F64) for x in xs]


def circ_diff(a, b):
    """Smallest absolute angular difference."""
    d = torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi
    return d.abs()


def Rz(t):
    c, s = math.cos(t), math.sin(t)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=F64)


def Rx(t):
    c, s = math.cos(t), math.sin(t)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=F64)


def assert_rotation(R, tol):
    eye = torch.eye(3, dtype=R.dtype).expand(R.shape)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=tol)
    assert torch.allclose(torch.linalg.det(R), torch.ones((), dtype=R.dtype), atol=tol)


def rand_rots(n, dtype=F64, seed=0):
    return G.random_rotations(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------ Euler angles


@FAST
@given(azimuths, elevations, thetas)
def test_euler_matches_reference_product(a, e, t):
    R = G.euler_to_matrix(*t64(a, e, t))
    ref = Rz(t) @ Rx(e - math.pi / 2) @ Rz(-a)
    assert torch.allclose(R, ref, atol=1e-12)
    assert_rotation(R, 1e-12)


@FAST
@given(azimuths, st.floats(-math.pi / 2 + 1e-3, math.pi / 2 - 1e-3), thetas)
def test_euler_matrix_euler_round_trip(a, e, t):
    a2, e2, t2 = G.matrix_to_euler(G.euler_to_matrix(*t64(a, e, t)))
    assert circ_diff(a2, torch.tensor(a, dtype=F64)) < 1e-9
    assert abs(e2.item() - e) < 1e-9
    assert circ_diff(t2, torch.tensor(t, dtype=F64)) < 1e-9
    assert 0 <= a2 < 2 * math.pi and -math.pi / 2 <= e2 <= math.pi / 2 and -math.pi <= t2 < math.pi


@pytest.mark.parametrize("dtype", DTYPES)
def test_euler_round_trip_batched(dtype):
    g = torch.Generator().manual_seed(1)
    n = (7, 11)
    a = torch.rand(n, generator=g, dtype=dtype) * 2 * math.pi
    e = (torch.rand(n, generator=g, dtype=dtype) - 0.5) * (math.pi - 0.2)
    t = (torch.rand(n, generator=g, dtype=dtype) * 2 - 1) * math.pi
    R = G.euler_to_matrix(a, e, t)
    assert R.shape == n + (3, 3) and R.dtype == dtype
    a2, e2, t2 = G.matrix_to_euler(R)
    tol = 1e-3 if dtype == torch.float32 else 1e-10
    assert (circ_diff(a2, a) < tol).all() and ((e2 - e).abs() < tol).all() and (circ_diff(t2, t) < tol).all()


@FAST
@given(st.one_of(st.builds(lambda q: q, unit_quats)), st.sampled_from(DTYPES))
def test_matrix_euler_matrix_round_trip(q, dtype):
    R = G.quaternion_to_matrix(torch.tensor(q, dtype=dtype))
    a, e, t = G.matrix_to_euler(R)
    assert 0 <= a < 2 * math.pi and -math.pi / 2 <= e <= math.pi / 2 and -math.pi <= t < math.pi
    assert torch.allclose(G.euler_to_matrix(a, e, t), R, atol=10 * TOL[dtype])


@FAST
@given(azimuths, st.sampled_from([-1.0, 1.0]), thetas, st.sampled_from(DTYPES))
def test_gimbal_is_deterministic_and_reconstructs(a, sign, t, dtype):
    e = sign * math.pi / 2
    R = G.euler_to_matrix(torch.tensor(a, dtype=dtype), e, t)
    a2, e2, t2 = G.matrix_to_euler(R)
    assert a2.item() == 0.0
    assert e2.item() == torch.tensor(e, dtype=dtype).item()
    # All in-plane rotation goes to theta: theta - a at the north pole, theta + a at the south.
    assert circ_diff(t2.double(), torch.tensor(t - sign * a, dtype=F64)) < 10 * TOL[dtype]
    assert -math.pi <= t2 < math.pi
    assert torch.allclose(G.euler_to_matrix(a2, e2, t2), R, atol=10 * TOL[dtype])


def test_gimbal_exact_matrices():
    for e in (math.pi / 2, -math.pi / 2):
        R = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=F64) if e > 0 else torch.diag(
            torch.tensor([1.0, -1.0, -1.0], dtype=F64)
        )
        a, e2, t = G.matrix_to_euler(R)
        assert a.item() == 0.0 and e2.item() == e and t.item() == 0.0
        assert torch.allclose(G.euler_to_matrix(a, e2, t), R, atol=1e-15)


def test_euler_wrap_edges():
    # atan2 returns +pi; the contract range is [-pi, pi).
    R = G.euler_to_matrix(*t64(0.3, 0.2, math.pi))
    _, _, t = G.matrix_to_euler(R)
    assert -math.pi <= t < math.pi and circ_diff(t, torch.tensor(math.pi, dtype=F64)) < 1e-12
    a, _, _ = G.matrix_to_euler(G.euler_to_matrix(*t64(-1e-18, 0.2, 0.0)))
    assert 0 <= a < 2 * math.pi


def test_matrix_to_euler_gradients_finite_at_gimbal():
    a = torch.tensor([0.4, 0.4], dtype=F64, requires_grad=True)
    e = torch.tensor([math.pi / 2, 0.3], dtype=F64)
    R = G.euler_to_matrix(a, e, 0.2).detach().requires_grad_(True)
    out = sum(x.sum() for x in G.matrix_to_euler(R))
    (gR,) = torch.autograd.grad(out, R)
    assert torch.isfinite(gR).all()


# ------------------------------------------------------------------ camera contract


@pytest.mark.parametrize("dtype", DTYPES)
def test_contract_front_view(dtype):
    d = 2.5
    C = G.camera_center(torch.tensor(0.0, dtype=dtype), 0.0, d)
    assert torch.allclose(C, torch.tensor([0.0, -d, 0.0], dtype=dtype))
    T = G.camera_extrinsics(torch.tensor(0.0, dtype=dtype), 0.0, 0.0, d)
    assert T.shape == (4, 4)
    R, tr = T[:3, :3], T[:3, 3]
    assert torch.allclose(tr, torch.tensor([0.0, 0.0, -d], dtype=dtype))  # origin in front (-z)
    assert torch.allclose(R @ torch.tensor([0.0, 0.0, 1.0], dtype=dtype), torch.tensor([0.0, 1.0, 0.0], dtype=dtype))
    assert torch.allclose(R @ torch.tensor([0.0, -1.0, 0.0], dtype=dtype), torch.tensor([0.0, 0.0, 1.0], dtype=dtype))
    assert torch.equal(T[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype))


def test_contract_azimuth_and_elevation():
    C = G.camera_center(*t64(math.pi / 2, 0.0, 3.0))
    assert torch.allclose(C, torch.tensor([3.0, 0.0, 0.0], dtype=F64), atol=1e-12)
    C = G.camera_center(*t64(0.7, 0.4, 3.0))
    assert C[2] > 0
    C = G.camera_center(*t64(0.7, -0.4, 3.0))
    assert C[2] < 0
    assert torch.allclose(G.camera_center(*t64(0.0, math.pi / 2, 2.0)), torch.tensor([0, 0, 2.0], dtype=F64), atol=1e-12)


@FAST
@given(azimuths, elevations, thetas, st.floats(0.1, 10.0))
def test_extrinsics_look_at_origin(a, e, t, d):
    T = G.camera_extrinsics(*t64(a, e, t, d))
    C = G.camera_center(*t64(a, e, d))
    R = G.euler_to_matrix(*t64(a, e, t))
    assert torch.allclose(T[:3, :3], R)
    # Camera centre maps to the camera origin; the library origin lies on the -z axis at distance d.
    assert torch.allclose(T[:3, :3] @ C + T[:3, 3], torch.zeros(3, dtype=F64), atol=1e-12)
    assert torch.allclose(T[:3, 3], torch.tensor([0.0, 0.0, -d], dtype=F64), atol=1e-12)
    X = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    assert torch.allclose(T[:3, :3] @ X + T[:3, 3], R @ (X - C), atol=1e-12)


def test_camera_batching_and_broadcast():
    a = torch.linspace(0, 6, 5)
    T = G.camera_extrinsics(a[:, None], torch.zeros(1, 3), 0.1, 2.0)
    assert T.shape == (5, 3, 4, 4) and T.dtype == torch.float32
    assert G.camera_center(a, 0.0, 1.0).shape == (5, 3)


def test_euler_gradcheck():
    a, e, t = [torch.rand(4, dtype=F64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(G.euler_to_matrix, (a, e, t))


# ------------------------------------------------------------------ quaternions


@FAST
@given(unit_quats, st.sampled_from(DTYPES))
def test_quaternion_matrix_round_trip(q, dtype):
    q = torch.tensor(q, dtype=dtype)
    q = q / q.norm()
    R = G.quaternion_to_matrix(q)
    assert_rotation(R, 10 * TOL[dtype])
    q2 = G.matrix_to_quaternion(R)
    assert q2[0] >= 0 and abs(q2.norm().item() - 1) < 10 * TOL[dtype]
    qs = G.standardize_quaternion(q)
    # Sign is only defined up to +-1 when w == 0.
    ok = torch.allclose(q2, qs, atol=20 * TOL[dtype]) or (abs(qs[0]) < 1e-4 and torch.allclose(q2, -qs, atol=20 * TOL[dtype]))
    assert ok
    assert torch.allclose(G.quaternion_to_matrix(q2), R, atol=10 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_quaternion_batched_and_special(dtype):
    R = torch.cat([rand_rots(500, dtype), torch.eye(3, dtype=dtype)[None],
                   torch.diag(torch.tensor([1.0, -1, -1], dtype=dtype))[None],
                   torch.diag(torch.tensor([-1.0, 1, -1], dtype=dtype))[None],
                   torch.diag(torch.tensor([-1.0, -1, 1], dtype=dtype))[None]]).reshape(-1, 2, 3, 3)
    q = G.matrix_to_quaternion(R)
    assert q.shape == (252, 2, 4) and torch.isfinite(q).all() and (q[..., 0] >= 0).all()
    assert torch.allclose(G.quaternion_to_matrix(q), R, atol=10 * TOL[dtype])


def test_quaternion_unnormalised_and_standardize():
    q = torch.tensor([2.0, 0.0, 0.0, 2.0], dtype=F64)
    R = G.quaternion_to_matrix(q)
    assert torch.allclose(R, Rz(math.pi / 2), atol=1e-12)
    assert torch.equal(G.standardize_quaternion(torch.tensor([-1.0, 2, 3, 4])), torch.tensor([1.0, -2, -3, -4]))


def test_matrix_to_quaternion_gradcheck():
    R = rand_rots(6).requires_grad_(True)
    assert torch.autograd.gradcheck(G.matrix_to_quaternion, (R,))


# ------------------------------------------------------------------ axis-angle / log


axis3 = st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda v: sum(c * c for c in v) > 1e-2)
small_or_near_pi = st.one_of(
    st.floats(0.0, 1e-6), st.floats(1e-6, 1e-2), st.floats(0.01, math.pi - 0.01), st.floats(math.pi - 1e-3, math.pi - 1e-9)
)


@settings(max_examples=100, deadline=None)
@given(axis3, small_or_near_pi)
def test_axis_angle_round_trip(axis, angle):
    u = torch.tensor(axis, dtype=F64)
    v = u / u.norm() * angle
    R = G.axis_angle_to_matrix(v)
    assert_rotation(R, 1e-12)
    v2 = G.matrix_to_axis_angle(R)
    assert torch.allclose(v2, v, atol=1e-10, rtol=0)
    # Independent reference: the matrix exponential.
    assert torch.allclose(R, torch.linalg.matrix_exp(G.hat(v)), atol=1e-12)


@FAST
@given(axis3, st.floats(0.0, 4 * math.pi))
def test_axis_angle_any_angle_maps_to_principal(axis, angle):
    u = torch.tensor(axis, dtype=F64)
    v = u / u.norm() * angle
    R = G.axis_angle_to_matrix(v)
    v2 = G.matrix_to_axis_angle(R)
    assert v2.norm() <= math.pi + 1e-12
    assert torch.allclose(G.axis_angle_to_matrix(v2), R, atol=1e-11)


def test_axis_angle_exactly_pi_and_zero():
    for axis in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]):
        u = torch.tensor(axis, dtype=F64)
        v = u / u.norm() * math.pi
        v2 = G.matrix_to_axis_angle(G.axis_angle_to_matrix(v))
        assert torch.allclose(v2, v, atol=1e-7) or torch.allclose(v2, -v, atol=1e-7)
    z = torch.zeros(3, dtype=F64, requires_grad=True)
    R = G.axis_angle_to_matrix(z)
    assert torch.equal(R, torch.eye(3, dtype=F64))
    (g,) = torch.autograd.grad(R[0, 1] + R[1, 0], z)
    assert torch.isfinite(g).all()
    assert torch.equal(G.matrix_to_axis_angle(torch.eye(3, dtype=F64)), torch.zeros(3, dtype=F64))


def test_axis_angle_gradcheck_near_zero_and_generic():
    v = torch.tensor([[1e-4, -2e-4, 3e-4], [0.3, -1.2, 0.5]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(G.axis_angle_to_matrix, (v,))
    R = G.axis_angle_to_matrix(v.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(G.matrix_to_axis_angle, (R,))


def test_so3_log_is_skew_and_exp_inverts():
    R = rand_rots(200)
    L = G.so3_log(R)
    assert torch.allclose(L, -L.transpose(-1, -2))
    assert torch.allclose(torch.linalg.matrix_exp(L), R, atol=1e-10)


# ------------------------------------------------------------------ geodesic distance


@pytest.mark.parametrize("dtype", DTYPES)
def test_geodesic_symmetric_range_and_log_form(dtype):
    R1, R2 = rand_rots(2000, dtype, 3), rand_rots(2000, dtype, 4)
    d12, d21 = G.geodesic_distance(R1, R2), G.geodesic_distance(R2, R1)
    assert torch.allclose(d12, d21, atol=TOL[dtype])
    assert (d12 >= 0).all() and (d12 <= math.pi).all()
    assert torch.allclose(d12, G.geodesic_distance_log(R1, R2), atol=10 * TOL[dtype])
    rel = R1.transpose(-1, -2) @ R2
    acos = torch.arccos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    assert torch.allclose(d12, acos, atol=1e-3 if dtype == torch.float32 else 1e-7)
    assert torch.allclose(G.geodesic_distance(R1, R1), torch.zeros((), dtype=dtype), atol=10 * TOL[dtype])


@FAST
@given(axis3, small_or_near_pi)
def test_geodesic_accurate_near_0_and_pi(axis, angle):
    R_ref = rand_rots(1, seed=5)[0]
    u = torch.tensor(axis, dtype=F64)
    R = R_ref @ G.axis_angle_to_matrix(u / u.norm() * angle)
    d = G.geodesic_distance(R_ref, R)
    assert abs(d.item() - angle) < 1e-12
    assert abs(G.geodesic_distance_log(R_ref, R).item() - angle) < 1e-10


def test_geodesic_broadcast_and_grad():
    R1 = rand_rots(5)
    R2 = rand_rots(3, seed=1)
    d = G.geodesic_distance(R1[:, None], R2[None])
    assert d.shape == (5, 3)
    R = R1.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(G.geodesic_distance(R, R1).sum(), R)  # at distance 0
    assert torch.isfinite(g).all()
    assert torch.autograd.gradcheck(lambda A: G.geodesic_distance(A, R2[:1].expand(5, 3, 3)), (R1.requires_grad_(True),))


# ------------------------------------------------------------------ sampling


def test_random_rotations_orthonormal_and_uniform():
    n = 20000
    R = rand_rots(n, F64, 7)
    assert R.shape == (n, 3, 3)
    assert_rotation(R, 1e-12)
    assert R.mean(0).abs().max() < 0.03
    d = torch.sort(G.geodesic_distance(torch.eye(3, dtype=F64), R)).values
    cdf = (d - torch.sin(d)) / math.pi  # CDF of density (1 - cos t) / pi
    ecdf = torch.arange(1, n + 1, dtype=F64) / n
    assert (cdf - ecdf).abs().max() < 0.02  # KS; 99.9% critical value is ~0.014


def test_random_rotations_dtype_and_seed():
    a = G.random_rotations(4, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    b = G.random_rotations(4, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert G.random_rotations(3).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotations_at_distance(dtype):
    g = torch.Generator().manual_seed(2)
    R_ref = rand_rots(50, dtype, 9)
    angles = torch.rand(50, 4, generator=g, dtype=dtype) * math.pi
    angles[0] = torch.tensor([0.0, 1e-7, math.pi - 1e-6, math.pi], dtype=dtype)
    R = G.rotations_at_distance(R_ref[:, None], angles, generator=g)
    assert R.shape == (50, 4, 3, 3)
    assert_rotation(R, 10 * TOL[dtype])
    d = G.geodesic_distance(R_ref[:, None], R)
    assert torch.allclose(d, angles, atol=10 * TOL[dtype])
    # Scalar angle broadcasts against a batch of references.
    R1 = G.rotations_at_distance(R_ref, 0.5, generator=g)
    assert torch.allclose(G.geodesic_distance(R_ref, R1), torch.full((50,), 0.5, dtype=dtype), atol=10 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_stratified_rotations_bands(dtype):
    g = torch.Generator().manual_seed(11)
    R_ref = rand_rots(12, dtype, 3).reshape(3, 4, 3, 3)
    rots, dist = G.stratified_rotations(R_ref, n=30, generator=g)
    assert rots.shape == (3, 4, 30, 3, 3) and dist.shape == (3, 4, 30)
    d = G.geodesic_distance(R_ref[..., None, :, :], rots)
    assert torch.allclose(d, dist, atol=10 * TOL[dtype])
    eps = 10 * TOL[dtype]
    bands = [(0.0, math.radians(10)), (math.radians(10), math.radians(45)), (math.radians(45), math.pi)]
    for i, (lo, hi) in enumerate(bands):
        part = d[..., 10 * i: 10 * (i + 1)]
        assert (part >= lo - eps).all() and (part <= hi + eps).all()


def test_stratified_counts_and_custom_bands():
    R_ref = rand_rots(2)
    rots, dist = G.stratified_rotations(R_ref, n=7, fractions=(0.5, 0.0, 0.5), generator=torch.Generator().manual_seed(0))
    assert rots.shape == (2, 7, 3, 3)
    assert (dist[:, :4] <= math.radians(10)).all() and (dist[:, 4:] >= math.radians(45)).all()
    _, dist = G.stratified_rotations(R_ref, n=5, near=(0.1, 0.2), fractions=(1, 0, 0))
    assert ((dist >= 0.1) & (dist <= 0.2)).all()


def test_stratified_far_band_is_haar_in_shell():
    lo, hi = math.radians(45), math.pi
    R_ref = torch.eye(3, dtype=F64)
    _, dist = G.stratified_rotations(R_ref, n=6000, fractions=(0, 0, 1), generator=torch.Generator().manual_seed(4))
    d = torch.sort(dist).values
    F = lambda t: t - torch.sin(t)  # noqa: E731
    cdf = (F(d) - F(torch.tensor(lo, dtype=F64))) / (F(torch.tensor(hi, dtype=F64)) - F(torch.tensor(lo, dtype=F64)))
    ecdf = torch.arange(1, d.numel() + 1, dtype=F64) / d.numel()
    assert (cdf - ecdf).abs().max() < 0.03
    # More mass near pi than near the inner edge (uniform-in-angle would give ~equal).
    assert (d > 2.5).float().mean() > (d < 1.4).float().mean()


def test_deg_rad_helpers():
    assert torch.allclose(G.deg2rad(180.0), torch.tensor(math.pi))
    assert torch.allclose(G.rad2deg(torch.tensor([math.pi / 2], dtype=F64)), torch.tensor([90.0], dtype=F64))
