"""Spherical regression heads (method §2): S_exp, with S_flat and direct regression as baselines.

S_exp maps a raw embedding O to |P| on the positive orthant of the n-sphere,
|p_j| = exp(o_j) / sqrt(sum_k exp(2 o_k)), whose Jacobian (I - P P^T) diag(P) does not
depend on the magnitude of O; a separate classifier picks the sign combination.
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def spherical_exp(o: Tensor) -> Tensor:
    """|P| = exp(o) / ||exp(o)||, computed stably (a softmax of 2o, square-rooted)."""
    return torch.exp(o - 0.5 * torch.logsumexp(2.0 * o, dim=-1, keepdim=True))


def spherical_flat(o: Tensor, eps: float = 1e-8) -> Tensor:
    return o / o.norm(dim=-1, keepdim=True).clamp_min(eps)


class SignCode:
    """Sign combinations of the components that carry a free sign, as class indices.

    `free` lists the component indices whose sign is classified; the others have a
    fixed sign (`fixed_sign`), e.g. S2 normals N_z < 0, S3 quaternions a > 0.
    """

    def __init__(self, dim: int, free: tuple[int, ...], fixed_sign: dict[int, float] | None = None):
        self.dim, self.free = dim, tuple(free)
        self.fixed_sign = dict(fixed_sign or {})
        # class c <-> signs: bit i of c set means component free[i] is negative
        self.table = torch.tensor(
            [[-1.0 if (c >> i) & 1 else 1.0 for i in range(len(free))] for c in range(2 ** len(free))]
        )

    @property
    def n_classes(self) -> int:
        return 2 ** len(self.free)

    def encode(self, y: Tensor) -> Tensor:
        """Sign class of each target vector (zero counts as positive)."""
        neg = (y[..., list(self.free)] < 0).long()
        return (neg * (2 ** torch.arange(len(self.free), device=y.device))).sum(-1)

    def signs(self, cls: Tensor) -> Tensor:
        """(..., dim) sign vector of class indices, fixed components included."""
        s = torch.ones(*cls.shape, self.dim, device=cls.device, dtype=self.table.dtype)
        s[..., list(self.free)] = self.table.to(cls.device)[cls]
        for i, v in self.fixed_sign.items():
            s[..., i] = v
        return s

    def decode(self, abs_p: Tensor, cls: Tensor) -> Tensor:
        return abs_p * self.signs(cls).to(abs_p.dtype)


# The three problems of the chapter.
S1_SIGNS = SignCode(2, (0, 1))                       # (cos, sin) of an angle: 4 classes
S2_SIGNS = SignCode(3, (0, 1), {2: -1.0})            # normals (N_x, N_y, N_z), N_z < 0: 4 classes
S3_SIGNS = SignCode(4, (1, 2, 3), {0: 1.0})          # quaternion (a, b, c, d), a > 0: 8 classes


class SphericalHead(nn.Module):
    """From a feature vector to a point on S^(dim-1): 'exp' (S_exp + signs), 'flat' (S_flat) or 'direct'."""

    def __init__(self, in_features: int, signs: SignCode, kind: str = "exp"):
        super().__init__()
        if kind not in ("exp", "flat", "direct"):
            raise ValueError(f"unknown head kind {kind!r}")
        self.kind, self.signs = kind, signs
        self.raw = nn.Linear(in_features, signs.dim)
        self.sign_logits = nn.Linear(in_features, signs.n_classes) if kind == "exp" else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        o = self.raw(x)
        if self.kind == "exp":
            abs_p = spherical_exp(o)
            logits = self.sign_logits(x)
            return {"abs": abs_p, "sign_logits": logits, "pred": self.signs.decode(abs_p, logits.argmax(-1))}
        if self.kind == "flat":
            return {"pred": spherical_flat(o)}
        return {"pred": o}

    def loss(self, out: dict[str, Tensor], y: Tensor) -> Tensor:
        """S_exp: -<|P|, |Y|> + CE(signs); S_flat: -<P, Y>; direct: smooth-L1."""
        if self.kind == "exp":
            cos = -(out["abs"] * y.abs()).sum(-1).mean()
            return cos + F.cross_entropy(out["sign_logits"], self.signs.encode(y))
        if self.kind == "flat":
            return -(out["pred"] * y).sum(-1).mean()
        return F.smooth_l1_loss(out["pred"], y)

    @staticmethod
    def normalise(pred: Tensor) -> Tensor:
        """Direct regression's output projected onto the sphere for evaluation."""
        return spherical_flat(pred)


def sign_classes(dim: int) -> list[tuple[int, ...]]:
    """All sign combinations of `dim` components (for documentation and tests)."""
    return list(itertools.product((1, -1), repeat=dim))
