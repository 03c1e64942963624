import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.spherical import S1_SIGNS, S2_SIGNS, S3_SIGNS, SphericalHead, spherical_exp, spherical_flat



@given(st.lists(st.floats(-5, 5), min_size=2, max_size=5))
@settings(max_examples=40, deadline=None)
def test_sexp_jacobian_is_projection_times_diag(values):
    o = torch.tensor(values, dtype=torch.float64)
    p = spherical_exp(o)
    J = torch.autograd.functional.jacobian(spherical_exp, o)
    expected = (torch.eye(len(o), dtype=torch.float64) - torch.outer(p, p)) @ torch.diag(p)
    assert torch.allclose(J, expected, atol=1e-10)
    assert torch.isclose(p.norm(), torch.tensor(1.0, dtype=torch.float64)) and (p > 0).all()


def test_gradient_scale_sexp_bounded_sflat_inverse():
    torch.manual_seed(0)
    direction = torch.randn(4, dtype=torch.float64)
    y = torch.nn.functional.normalize(torch.randn(4, dtype=torch.float64), dim=0).abs()
    norms_exp, norms_flat = [], []
    for scale in (0.1, 1.0, 10.0, 100.0):
        o = (direction * scale).requires_grad_()
        (-(spherical_exp(o) * y).sum()).backward()
        norms_exp.append(o.grad.norm().item())
        o2 = (direction * scale).requires_grad_()
        (-(spherical_flat(o2) * y).sum()).backward()
        norms_flat.append(o2.grad.norm().item())
    # S_flat's gradient shrinks as 1/||O||: scaling O by 10 divides it by 10
    for a, b in zip(norms_flat, norms_flat[1:]):
        assert b == pytest.approx(a / 10, rel=1e-6)
    # S_exp's gradient stays bounded by ||(I - PP^T) diag(P)|| <= 1 at every scale
    assert all(n <= 1.0 + 1e-9 for n in norms_exp)


@pytest.mark.parametrize("code, n", [(S1_SIGNS, 4), (S2_SIGNS, 4), (S3_SIGNS, 8)])
def test_sign_classes_round_trip(code, n):
    assert code.n_classes == n
    torch.manual_seed(1)
    y = torch.nn.functional.normalize(torch.randn(500, code.dim), dim=-1)
    for i, s in code.fixed_sign.items():
        y[:, i] = s * y[:, i].abs()
    cls = code.encode(y)
    assert set(cls.tolist()) == set(range(n))
    assert torch.allclose(code.decode(y.abs(), cls), y)


def test_fixed_signs_of_s2_and_s3():
    assert (S2_SIGNS.signs(torch.arange(4))[:, 2] == -1).all()
    assert (S3_SIGNS.signs(torch.arange(8))[:, 0] == 1).all()


@pytest.mark.parametrize("kind", ["exp", "flat", "direct"])
def test_heads_learn_a_fixed_target(kind):
    torch.manual_seed(0)
    head = SphericalHead(8, S3_SIGNS, kind)
    x = torch.randn(64, 8)
    y = torch.nn.functional.normalize(torch.tensor([[0.5, -0.5, 0.5, -0.5]]).repeat(64, 1), dim=-1)
    opt = torch.optim.Adam(head.parameters(), 0.05)
    for _ in range(300):
        out = head(x)
        loss = head.loss(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = SphericalHead.normalise(head(x)["pred"])
    assert (pred * y).sum(-1).mean() > 0.98
