"""Label heads for tagging (method §3): the quasibinary classifier and its three baselines.

Quasibinary: every class is a Bernoulli variable q_k = exp(z_k) / C with one constant C shared
by all classes and all images.  In training C = sum exp(z) / N over the batch (N labels in it),
so the batch's confidences must add up to its number of labels; at test time the moving average
C_avg is used, so an image can have zero, one or several confident labels.  C is tracked in the
log domain: exp(z) overflows float16 (the shipped weights' format) long before it is extreme.

Baselines, same interface: independent sigmoids; softmax (multi-hot targets normalised; images
without labels are skipped: a softmax cannot say "none"); softmax with a temperature fitted
after training on held-out images.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

KINDS = ("quasibinary", "sigmoid", "softmax", "softmax-t")


def quasibinary_log_c(z: Tensor, y: Tensor) -> Tensor | None:
    """log C = log(sum_i sum_k exp(z_ik) / N) for a batch; None when the batch has no label."""
    n = float(y.sum())
    if n <= 0:
        return None
    return torch.logsumexp(z.reshape(-1), 0) - math.log(n)


def quasibinary_loss(z: Tensor, y: Tensor, log_c: Tensor) -> Tensor:
    """-(1/B) sum_i sum_k [y log q - max(log q, 0)], log q = z - log C."""
    log_q = z - log_c
    return -(y * log_q - log_q.clamp_min(0.0)).sum(-1).mean()


class TagHead(nn.Module):
    """Linear logits plus the kind's loss and test-time confidences (each in [0, 1], per class)."""

    def __init__(self, in_features: int, n_labels: int, kind: str = "quasibinary", momentum: float = 0.1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown tag head {kind!r}; choose one of {KINDS}")
        self.kind, self.momentum = kind, float(momentum)
        self.linear = nn.Linear(in_features, n_labels)
        self.register_buffer("log_c_avg", torch.zeros(()))
        self.register_buffer("c_seen", torch.zeros(()))      # 0 until the first labelled batch
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    @torch.no_grad()
    def _track(self, log_c: Tensor) -> None:
        if self.c_seen.item() == 0:
            self.log_c_avg.copy_(log_c)
            self.c_seen.fill_(1)
            return
        a = self.momentum
        self.log_c_avg.copy_(torch.logaddexp(self.log_c_avg + math.log(1 - a), log_c + math.log(a)))

    def loss(self, z: Tensor, y: Tensor) -> Tensor:
        """Training loss for logits z (B, K) and multi-hot targets y (B, K); updates C_avg."""
        y = y.to(z.dtype)
        if self.kind == "quasibinary":
            log_c = quasibinary_log_c(z, y)
            if log_c is None:   # a batch without labels: only keep q <= 1 under the running C
                return (z - self.log_c_avg).clamp_min(0.0).sum(-1).mean()
            if self.training:
                self._track(log_c.detach())
            return quasibinary_loss(z, y, log_c)
        if self.kind == "sigmoid":
            return F.binary_cross_entropy_with_logits(z, y)
        rows = y.sum(-1) > 0
        if not rows.any():
            return z.sum() * 0.0
        target = y[rows] / y[rows].sum(-1, keepdim=True)
        return -(target * F.log_softmax(z[rows], -1)).sum(-1).mean()

    def probabilities(self, z: Tensor) -> Tensor:
        if self.kind == "quasibinary":
            return torch.exp(z - self.log_c_avg).clamp(0.0, 1.0)
        if self.kind == "sigmoid":
            return torch.sigmoid(z)
        return torch.softmax(z / self.temperature, -1)

    @torch.no_grad()
    def fit_temperature(self, z: Tensor, y: Tensor, steps: int = 200) -> float:
        """Softmax-T: the temperature minimising held-out NLL (labelled images only)."""
        if self.kind != "softmax-t":
            return 1.0
        rows = y.sum(-1) > 0
        z, y = z[rows].detach(), y[rows].to(z.dtype)
        target = y / y.sum(-1, keepdim=True)
        log_t = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

        def closure():
            opt.zero_grad()
            with torch.enable_grad():
                loss = -(target * F.log_softmax(z / log_t.exp(), -1)).sum(-1).mean()
                loss.backward()
            return loss

        opt.step(closure)
        self.temperature.fill_(float(log_t.exp().clamp(0.05, 20.0)))
        return float(self.temperature)
