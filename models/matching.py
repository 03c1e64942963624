"""The geometric differential matching network (method §1).

Two AlexNet-topology streams with separate weights (photo crop, texture-free
rendering crop) and a fusion head: a 1x1 convolution over the channel-concatenated
feature maps, ReLU, a fully connected layer with one output, trained to regress
the geodesic distance between the photo's and the rendering's rotations.

The 1x1 convolution is linear in the concatenation, W [p; r] + b = W_p p + (W_r r + b),
so the rendering half `W_r r + b` is a per-view code that the index stores once;
a query then costs one photo-stream pass plus add, ReLU and the FC over all views.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .registry import register


@dataclass(frozen=True)
class MatchingConfig:
    input_size: int = 64
    photo_channels: int = 3
    render_channels: int = 1
    widths: tuple[int, int, int, int, int] = (32, 64, 96, 96, 64)   # conv1..conv5
    fusion_channels: int = 64                                       # 1x1 conv output
    init_std: float = 0.005                                         # new layers ~ N(0, 0.005^2)

    def to_dict(self) -> dict:
        return asdict(self)


def _stream(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    """AlexNet conv1-conv5 topology (large strided conv1, pooling after 1, 2 and 5), scaled."""
    c1, c2, c3, c4, c5 = widths
    return nn.Sequential(
        nn.Conv2d(in_ch, c1, 5, stride=2, padding=2), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, 3, padding=1), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, 3, padding=1), nn.BatchNorm2d(c5), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, padding=1),
    )


class GeometricDifferential(nn.Module):
    """Fusion head; split into a photo half and a rendering half for indexing."""

    def __init__(self, channels: int, spatial: int, hidden: int, init_std: float):
        super().__init__()
        self.photo_proj = nn.Conv2d(channels, hidden, 1, bias=False)
        self.render_proj = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc = nn.Linear(hidden * spatial * spatial, 1)
        for m in (self.photo_proj, self.render_proj, self.fc):
            nn.init.normal_(m.weight, 0.0, init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        # Distances are in radians, up to pi: start the output at the mean distance.
        nn.init.constant_(self.fc.bias, 1.2)

    def render_code(self, render_features: Tensor) -> Tensor:
        return self.render_proj(render_features).flatten(1)

    def photo_code(self, photo_features: Tensor) -> Tensor:
        return self.photo_proj(photo_features).flatten(1)

    def score_codes(self, photo_code: Tensor, render_codes: Tensor) -> Tensor:
        """(P, D) photo codes x (P, N, D) or (N, D) view codes -> predicted distances (P, N)."""
        if render_codes.dim() == 2:
            render_codes = render_codes.unsqueeze(0)
        h = torch.relu(render_codes + photo_code.unsqueeze(1))
        return h @ self.fc.weight.squeeze(0) + self.fc.bias


class MatchingNet(nn.Module):
    def __init__(self, config: MatchingConfig = MatchingConfig()):
        super().__init__()
        self.config = config
        self.photo_stream = _stream(config.photo_channels, config.widths)
        self.render_stream = _stream(config.render_channels, config.widths)
        spatial = self.feature_size(config.input_size)
        self.head = GeometricDifferential(config.widths[-1], spatial, config.fusion_channels, config.init_std)

    @staticmethod
    def feature_size(input_size: int) -> int:
        s = input_size
        for stride in (2, 2, 2, 2):  # conv1, pool1, pool2, pool5
            s = (s + 1) // stride
        return s

    @property
    def code_dim(self) -> int:
        return self.config.fusion_channels * self.feature_size(self.config.input_size) ** 2

    def render_codes(self, renders: Tensor) -> Tensor:
        """(N, Cr, S, S) rendering crops in [0, 1] -> (N, D) codes the index stores."""
        return self.head.render_code(self.render_stream(renders))

    def photo_codes(self, photos: Tensor) -> Tensor:
        return self.head.photo_code(self.photo_stream(photos))

    def forward(self, photos: Tensor, renders: Tensor) -> Tensor:
        """(P, Cp, S, S) photos and (P, N, Cr, S, S) renderings -> (P, N) predicted distances (radians)."""
        P, N = renders.shape[:2]
        codes = self.render_codes(renders.flatten(0, 1)).view(P, N, -1)
        return self.head.score_codes(self.photo_codes(photos), codes)


@register("matching-cpu")
def matching_cpu(**overrides) -> MatchingNet:
    """Trains on 2 CPU cores in well under an hour."""
    return MatchingNet(MatchingConfig(**overrides))


@register("matching-gpu")
def matching_gpu(**overrides) -> MatchingNet:
    """Closer to the original AlexNet widths and input size, for a GPU."""
    cfg = dict(input_size=112, widths=(64, 192, 384, 256, 256), fusion_channels=128)
    cfg.update(overrides)
    return MatchingNet(MatchingConfig(**cfg))
