"""S2 surface normals (method §2): a small U-Net predicting a unit normal per pixel.

The dense heads apply the math of `spherical.py` at every pixel (1x1 convolutions):

* ``exp`` (S_exp, ours): |P| = spherical_exp(O) over the 3 channels, plus 4 sign classes per
  pixel for (N_x, N_y); loss -<|P|, |Y|> + CE(signs).
* ``flat`` (S_flat): P = O / ||O||; loss -<P, Y>.
* ``direct``: smooth-L1 on O, normalised for evaluation.

Frames.  Inputs and outputs of this module (``predict``, ``loss`` targets) are normals in the
contract's camera frame facing the viewer, n_z > 0 (as ``Sample.normals`` and
``Scene.normals``).  The S_exp head follows the thesis and `S2_SIGNS` (N_z < 0, the sign of z
fixed): internally it works on (n_x, n_y, -n_z); ``to_head`` / ``from_head`` flip z at this
boundary; they also turn (x, y) by 45° about the viewing axis, which balances the sign classes (the ground's
normal has n_x ~ 0, on a class boundary). The same frame serves all three heads (a rotation: S_flat's loss
does not see it).  Every loss and metric is averaged over the pixels of ``mask`` only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .registry import register
from .spherical import S2_SIGNS, spherical_exp, spherical_flat

_C45 = 0.5 ** 0.5


def to_head(n: Tensor) -> Tensor:
    """(..., 3) camera-frame normals (n_z > 0) -> the head's frame: z flipped (N_z < 0) and (x, y) turned by 45°
    about the viewing axis. The turn balances the sign classes (as the 45° shift of S1): the ground's normal,
    the commonest, has n_x ~ 0, right on a sign boundary, and lands at (-, +) away from both boundaries."""
    x, y, z = n.unbind(-1)
    return torch.stack([(x - y) * _C45, (x + y) * _C45, -z], -1)


def from_head(h: Tensor) -> Tensor:
    """The inverse of `to_head`."""
    a, b, z = h.unbind(-1)
    return torch.stack([(a + b) * _C45, (b - a) * _C45, -z], -1)


@dataclass(frozen=True)
class NormalsConfig:
    input_size: int = 64                            # training resolution (square); any multiple of 16 runs
    widths: tuple[int, int, int, int] = (16, 32, 64, 96)   # at 1/2, 1/4, 1/8, 1/16 of the input
    full_width: int = 8                             # a light full-resolution skip branch
    head: str = "exp"                               # 'exp', 'flat' or 'direct'

    def to_dict(self) -> dict:
        return asdict(self)


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DenseSphericalHead(nn.Module):
    """`SphericalHead` per pixel: (B, C, H, W) features -> (B, H, W, 3) points on S^2 (head convention)."""

    def __init__(self, in_channels: int, kind: str = "exp"):
        super().__init__()
        if kind not in ("exp", "flat", "direct"):
            raise ValueError(f"unknown head kind {kind!r}")
        self.kind, self.signs = kind, S2_SIGNS
        self.raw = nn.Conv2d(in_channels, 3, 1)
        self.sign_logits = nn.Conv2d(in_channels, S2_SIGNS.n_classes, 1) if kind == "exp" else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        o = self.raw(x).permute(0, 2, 3, 1)                     # (B, H, W, 3)
        if self.kind == "exp":
            abs_p = spherical_exp(o)
            logits = self.sign_logits(x).permute(0, 2, 3, 1)    # (B, H, W, 4)
            return {"abs": abs_p, "sign_logits": logits, "pred": self.signs.decode(abs_p, logits.argmax(-1))}
        if self.kind == "flat":
            return {"pred": spherical_flat(o)}
        return {"pred": o}

    def loss(self, out: dict[str, Tensor], y: Tensor, mask: Tensor) -> Tensor:
        """y: (B, H, W, 3) targets in the head convention; mask: (B, H, W) bool, or float per-pixel weights."""
        m = mask.float()
        denom = m.sum().clamp_min(1.0)
        if self.kind == "exp":
            cos = -((out["abs"] * y.abs()).sum(-1) * m).sum() / denom
            ce = F.cross_entropy(out["sign_logits"].reshape(-1, self.signs.n_classes), self.signs.encode(y).reshape(-1),
                                 reduction="none")
            return cos + (ce * m.reshape(-1)).sum() / denom
        if self.kind == "flat":
            return -((out["pred"] * y).sum(-1) * m).sum() / denom
        l1 = F.smooth_l1_loss(out["pred"], y, reduction="none").mean(-1)
        return (l1 * m).sum() / denom


class NormalsNet(nn.Module):
    """An encoder-decoder with skip connections (a small U-Net).

    Encoder: a stride-2 stem, then three stride-2 stages (1/2 .. 1/16 of the input); decoder:
    bilinear upsampling, concatenation with the encoder stage of the same size, a 3x3 conv;
    last, a light full-resolution branch of the input joins before the dense head, so the
    output has the input's size. (The stride-2 stem keeps it trainable on a CPU.)
    """

    def __init__(self, config: NormalsConfig = NormalsConfig()):
        super().__init__()
        self.config = config
        c1, c2, c3, c4 = config.widths
        f = config.full_width
        self.full = _cbr(3, f)
        self.enc1 = nn.Sequential(_cbr(3, c1, 2), _cbr(c1, c1))
        self.enc2 = nn.Sequential(_cbr(c1, c2, 2), _cbr(c2, c2))
        self.enc3 = nn.Sequential(_cbr(c2, c3, 2), _cbr(c3, c3))
        self.enc4 = nn.Sequential(_cbr(c3, c4, 2), _cbr(c4, c4))
        self.dec3, self.dec2 = _cbr(c4 + c3, c3), _cbr(c3 + c2, c2)
        self.dec1, self.dec0 = _cbr(c2 + c1, c1), _cbr(c1 + f, c1)
        self.head = DenseSphericalHead(c1, config.head)

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def features(self, x: Tensor) -> Tensor:
        f = self.full(x)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        d = self.dec3(torch.cat([self._up(e4, e3), e3], 1))
        d = self.dec2(torch.cat([self._up(d, e2), e2], 1))
        d = self.dec1(torch.cat([self._up(d, e1), e1], 1))
        return self.dec0(torch.cat([self._up(d, f), f], 1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, 3, H, W) images as `images_to_tensor` makes them; outputs in the head convention."""
        return self.head(self.features(x))

    def loss(self, x: Tensor, normals: Tensor, mask: Tensor) -> Tensor:
        """normals: (B, H, W, 3) camera frame, facing the viewer; mask: (B, H, W) bool or float weights."""
        return self.head.loss(self(x), to_head(normals), mask)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """(B, H, W, 3) unit normals in the camera frame, facing the viewer (n_z > 0 for S_exp)."""
        return from_head(spherical_flat(self(x)["pred"]))


def images_to_tensor(images) -> Tensor:
    """(B, H, W, 3) uint8 RGB (numpy or tensor) -> (B, 3, H, W) float in [-0.5, 0.5], channels-last in memory
    (several times faster for these small convolutions on a CPU)."""
    t = images if isinstance(images, Tensor) else torch.from_numpy(np.array(images, dtype=np.uint8))
    return t.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).contiguous(memory_format=torch.channels_last)


def angular_error_deg(pred: Tensor, truth: Tensor) -> Tensor:
    """Angle between unit vectors along the last dim, degrees."""
    cos = (spherical_flat(pred) * spherical_flat(truth)).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def error_table(err: Tensor) -> dict:
    """The S2 metrics of a flat tensor of per-pixel errors in degrees."""
    err = err.double().flatten()
    if err.numel() == 0:
        return {"pixels": 0}
    return {"pixels": int(err.numel()), "mean_deg": float(err.mean()), "median_deg": float(err.median()),
            "within_11.25": float((err < 11.25).double().mean()), "within_22.5": float((err < 22.5).double().mean()),
            "within_30": float((err < 30.0).double().mean())}


@register("normals-cpu")
def normals_cpu(**overrides) -> NormalsNet:
    return NormalsNet(NormalsConfig(**overrides)).to(memory_format=torch.channels_last)
