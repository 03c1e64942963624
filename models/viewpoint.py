"""S1 viewpoint (method §2): azimuth, elevation and in-plane rotation as points on S^1.

A shared convolutional backbone (the matching network's photo-stream topology, so it can
start from those weights) and, per category, one spherical head per Euler angle predicting
(cos φ, sin φ). Targets are rotated by +45° in training and predictions by −45° at test,
which spreads the angles evenly over the four sign classes. A generic head ('*') answers
when the category is unknown.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .matching import MatchingNet, _stream
from .registry import register
from .spherical import S1_SIGNS, SphericalHead

ANGLES = ("azimuth", "elevation", "theta")
ANY = "*"


@dataclass(frozen=True)
class ViewpointConfig:
    input_size: int = 64
    widths: tuple[int, int, int, int, int] = (32, 64, 96, 96, 64)
    hidden: int = 256
    categories: tuple[str, ...] = ("aeroplane", "boat", "car")
    head: str = "exp"              # 'exp' (S_exp + signs), 'flat' (S_flat) or 'direct' (smooth-L1)
    shift_deg: float = 45.0        # the target rotation that balances the sign classes
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


def wrap360(deg: Tensor) -> Tensor:
    """Degrees into [0, 360): `remainder` alone rounds a tiny negative angle up to 360."""
    r = torch.remainder(deg, 360.0)
    return torch.where(r >= 360.0, torch.zeros_like(r), r)


def angles_to_targets(angles_deg: Tensor, shift_deg: float) -> Tensor:
    """(B, 3) degrees -> (B, 3, 2) unit (cos, sin) of the shifted angles."""
    r = torch.deg2rad(angles_deg + shift_deg)
    return torch.stack([torch.cos(r), torch.sin(r)], -1)


def targets_to_angles(cs: Tensor, shift_deg: float) -> Tensor:
    """(B, 3, 2) (cos, sin) -> (B, 3) degrees in the contract's ranges."""
    ang = torch.rad2deg(torch.atan2(cs[..., 1], cs[..., 0])) - shift_deg
    a = wrap360(ang[:, 0])
    e = torch.remainder(ang[:, 1] + 180.0, 360.0) - 180.0
    e = e.clamp(-90.0, 90.0)
    t = torch.remainder(ang[:, 2] + 180.0, 360.0) - 180.0
    return torch.stack([a, e, t], 1)


def backbone_and_neck(in_channels: int, config) -> tuple[nn.Sequential, nn.Sequential]:
    """The matching stream's topology (so it can start from those weights) and a dense layer to
    `config.hidden` features; shared by the S1 and S3 regressors."""
    s = MatchingNet.feature_size(config.input_size)
    neck = nn.Sequential(nn.Flatten(), nn.Linear(config.widths[-1] * s * s, config.hidden), nn.ReLU(inplace=True),
                         nn.Dropout(config.dropout))
    return _stream(in_channels, config.widths), neck


class ViewpointNet(nn.Module):
    def __init__(self, config: ViewpointConfig = ViewpointConfig()):
        super().__init__()
        self.config = config
        self.backbone, self.neck = backbone_and_neck(3, config)
        self.names = tuple(config.categories) + (ANY,)
        self.heads = nn.ModuleDict({
            self._key(c): nn.ModuleList(SphericalHead(config.hidden, S1_SIGNS, config.head) for _ in ANGLES) for c in self.names
        })

    @staticmethod
    def _key(category: str) -> str:
        return "any" if category == ANY else category

    def category_index(self, categories: list[str | None]) -> Tensor:
        idx = {c: i for i, c in enumerate(self.names)}
        return torch.tensor([idx.get(c, len(self.names) - 1) if c else len(self.names) - 1 for c in categories])

    def features(self, x: Tensor) -> Tensor:
        return self.neck(self.backbone(x))

    def head_outputs(self, feats: Tensor, category: str) -> list[dict[str, Tensor]]:
        return [h(feats) for h in self.heads[self._key(category)]]

    def loss(self, x: Tensor, angles_deg: Tensor, categories: list[str]) -> Tensor:
        """Category heads on their own samples plus the generic head on all of them."""
        feats = self.features(x)
        y = angles_to_targets(angles_deg, self.config.shift_deg)
        total = 0.0
        for c in self.names:
            rows = torch.arange(len(categories)) if c == ANY else torch.tensor([i for i, k in enumerate(categories) if k == c], dtype=torch.long)
            if len(rows) == 0:
                continue
            outs = self.head_outputs(feats[rows], c)
            w = len(rows) / len(categories)
            total = total + w * sum(h.loss(o, y[rows, j]) for j, (h, o) in enumerate(zip(self.heads[self._key(c)], outs)))
        return total

    @torch.no_grad()
    def predict(self, x: Tensor, categories: list[str | None], mirror: bool = True) -> tuple[Tensor, Tensor]:
        """(B, 3) angles in degrees and (B,) confidence in [0, 1] (sign-class certainty; 1 for the baselines).
        With `mirror`, the photo's horizontal mirror image is predicted too and the two answers merged
        (`merge_mirrored`): the categories are left-right symmetric, and the mirror halves the
        one-sided mistakes."""
        if not mirror:
            return self._predict(x, categories)
        angles, conf = self._predict(torch.cat([x, x.flip(-1)]), list(categories) * 2)
        b = len(x)
        return merge_mirrored(angles[:b], conf[:b], mirror_angles(angles[b:]), conf[b:])

    def _predict(self, x: Tensor, categories: list[str | None]) -> tuple[Tensor, Tensor]:
        feats = self.features(x)
        cs = torch.zeros(len(x), 3, 2, device=x.device)
        conf = torch.ones(len(x), device=x.device)
        for c in self.names:
            rows = [i for i, k in enumerate(categories) if (k if k in self.names else ANY) == c]
            if not rows:
                continue
            r = torch.tensor(rows, dtype=torch.long, device=x.device)
            for j, out in enumerate(self.head_outputs(feats[r], c)):
                cs[r, j] = SphericalHead.normalise(out["pred"])
                if "sign_logits" in out:
                    conf[r] = conf[r] * out["sign_logits"].softmax(-1).max(-1).values
        return targets_to_angles(cs, self.config.shift_deg), conf

    def load_backbone_from(self, matching: MatchingNet) -> None:
        """Start from the matching network's photo stream (same topology and input)."""
        self.backbone.load_state_dict(matching.photo_stream.state_dict())


def mirror_angles(angles_deg: Tensor) -> Tensor:
    """The pose of a left-right symmetric object seen in the mirrored photo: azimuth and in-plane angle negate."""
    out = angles_deg.clone()
    out[..., 0] = wrap360(-angles_deg[..., 0])
    out[..., 2] = -angles_deg[..., 2]
    return out


def merge_mirrored(a: Tensor, conf_a: Tensor, b: Tensor, conf_b: Tensor, agree_deg: float = 60.0) -> tuple[Tensor, Tensor]:
    """Merge two (B, 3) estimates of one pose: the per-angle circular mean where their rotations agree
    within `agree_deg`, else the more confident one (a mean of a pose and its flip is neither).
    Measured on held-out photos in docs/eval_viewpoint.md ('mirror-averaged')."""
    close = geodesic_deg(a, b) <= agree_deg
    ra, rb = torch.deg2rad(a.double()), torch.deg2rad(b.double())
    mean = torch.rad2deg(torch.atan2(torch.sin(ra) + torch.sin(rb), torch.cos(ra) + torch.cos(rb)))
    mean[:, 1] = mean[:, 1].clamp(-90.0, 90.0)
    pick = torch.where((conf_a >= conf_b)[:, None], a, b).double()
    merged = torch.where(close[:, None], mean, pick).to(a.dtype)
    merged[:, 0] = wrap360(merged[:, 0])
    return merged, torch.where(close, (conf_a + conf_b) / 2, torch.maximum(conf_a, conf_b))


@register("viewpoint-cpu")
def viewpoint_cpu(**overrides) -> ViewpointNet:
    return ViewpointNet(ViewpointConfig(**overrides))


def geodesic_deg(pred: Tensor, true: Tensor) -> Tensor:
    """Angle in degrees between the rotations of two (B, 3) Euler triples."""
    from .geometry import euler_to_matrix, geodesic_distance

    p, t = torch.deg2rad(pred.double()), torch.deg2rad(true.double())
    return torch.rad2deg(geodesic_distance(euler_to_matrix(*p.unbind(1)), euler_to_matrix(*t.unbind(1))))


def accuracy_table(err_deg: Tensor) -> dict[str, float]:
    e = err_deg.float()
    return {"n": int(len(e)), "acc_pi6": float((e < 30).float().mean()), "acc_pi12": float((e < 15).float().mean()),
            "acc_pi24": float((e < 7.5).float().mean()), "median_deg": float(e.median()) if len(e) else math.nan}


def poses_near(grid_rotations: Tensor, angles_deg: Tensor, radius_deg: float, flips: bool = True) -> Tensor:
    """Indices of the grid poses within `radius_deg` of the predicted rotation, or of its front/back flip
    (azimuth + 180°, the common confusion) when `flips`. grid_rotations: (V, 3, 3); angles_deg: (3,)."""
    from .geometry import euler_to_matrix, geodesic_distance

    a, e, t = torch.deg2rad(angles_deg.double()).unbind(-1)
    centres = [euler_to_matrix(a, e, t)]
    if flips:
        centres.append(euler_to_matrix(a + math.pi, e, t))
    near = torch.zeros(len(grid_rotations), dtype=torch.bool)
    for R in centres:
        d = torch.rad2deg(geodesic_distance(grid_rotations.double(), R.expand_as(grid_rotations)))
        near |= d <= radius_deg
    return torch.nonzero(near).squeeze(1)


@dataclass(frozen=True)
class PosePrior:
    """A soft S1 viewpoint prior for the shape search.

    The S1 prediction gives a second estimate of a candidate pose's geodesic distance to the
    photo's pose: its rotation away from the prediction, or away from the prediction's front/back
    flip plus `flip_cost` degrees (S1's commonest confusion; None: the flip is not considered).
    The search ranks by the weighted mean of the matcher's estimate and this one (`combine`), so
    the matcher still chooses between shapes and nearby poses, and a good match far from a wrong
    prediction can still win. `python -m models.eval_prior` picks weight, flip_cost and the confidence
    scaling (`from_prediction`) on tuning photos."""

    angles_deg: tuple[float, float, float]
    weight: float = 1.0             # the plain mean; the service's tuned values are in the settings
    flip_cost: float | None = None

    @classmethod
    def from_prediction(cls, angles_deg, confidence: float, weight: float = 1.0, flip_cost: float | None = None,
                        confidence_power: float = 0.0) -> "PosePrior":
        """The prior of one S1 prediction, its weight scaled by confidence ** confidence_power: S1's
        sign-class confidence tracks its error (held-out Acc@π/6 about 0.5 in the least confident
        quarter, 0.8 in the most), so an unsure prediction can pull less."""
        w = weight * float(confidence) ** confidence_power if confidence_power else weight
        return cls(tuple(float(a) for a in angles_deg), w, flip_cost)

    def distance(self, poses_deg) -> Tensor:
        """(N, 3) poses in degrees -> (N,) the prior's distance estimates in degrees (float64)."""
        from .geometry import euler_to_matrix, geodesic_distance

        p = torch.deg2rad(torch.as_tensor(poses_deg, dtype=torch.float64).reshape(-1, 3))
        R = euler_to_matrix(*p.unbind(-1))
        a, e, t = torch.deg2rad(torch.tensor(self.angles_deg, dtype=torch.float64)).unbind(-1)
        d = torch.rad2deg(geodesic_distance(R, euler_to_matrix(a, e, t).expand_as(R)))
        if self.flip_cost is not None:
            flip = torch.rad2deg(geodesic_distance(R, euler_to_matrix(a + math.pi, e, t).expand_as(R)))
            d = torch.minimum(d, flip + self.flip_cost)
        return d

    def combine(self, matcher_deg, prior_deg):
        """The ranking value: the weighted mean of the two distance estimates (degrees)."""
        return (matcher_deg + self.weight * prior_deg) / (1.0 + self.weight)
