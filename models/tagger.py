"""The tagger: the photo stream's backbone and a label head (quasibinary, a baseline, or RBF prototypes).

One network type for the tagging chapter and Vec2Bundle so every head is trained on the same
features and recipe; only the last layer and its loss differ.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .matching import MatchingNet
from .quasibinary import KINDS as TAG_KINDS, TagHead
from .registry import register
from .vec2bundle import RBFPrototypes
from .viewpoint import backbone_and_neck

#: Single-label heads of the Vec2Bundle experiments: RBF prototypes or a plain linear layer (ablation).
SINGLE = ("rbf", "linear")
MULTI = ("rbf-multi",)
HEADS = TAG_KINDS + SINGLE + MULTI


@dataclass(frozen=True)
class TaggerConfig:
    input_size: int = 64
    widths: tuple[int, int, int, int, int] = (32, 64, 96, 96, 64)
    hidden: int = 256
    dropout: float = 0.2
    labels: tuple[str, ...] = ()
    head: str = "quasibinary"
    momentum: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class TaggerNet(nn.Module):
    def __init__(self, config: TaggerConfig = TaggerConfig()):
        super().__init__()
        if config.head not in HEADS:
            raise ValueError(f"unknown head {config.head!r}; choose one of {HEADS}")
        if not config.labels:
            raise ValueError("a tagger needs labels")
        self.config = config
        self.backbone, self.neck = backbone_and_neck(3, config)
        k = len(config.labels)
        if config.head in TAG_KINDS:
            self.head = TagHead(config.hidden, k, config.head, config.momentum)
        elif config.head == "linear":
            self.head = nn.Linear(config.hidden, k)
        else:
            self.head = RBFPrototypes(config.hidden, k, multi_label=config.head == "rbf-multi")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def multi_label(self) -> bool:
        return self.config.head not in SINGLE

    def load_backbone_from(self, matching: MatchingNet) -> None:
        self.backbone.load_state_dict(matching.photo_stream.state_dict())

    def forward(self, x: Tensor) -> Tensor:
        return self.from_features(self.backbone(x))

    def from_features(self, f: Tensor) -> Tensor:
        """Logits from backbone feature maps (training on cached features of a frozen backbone)."""
        return self.head(self.neck(f))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_from_logits(self(x), y)

    def loss_from_logits(self, z: Tensor, y: Tensor) -> Tensor:
        """y: (B, K) multi-hot (single-label heads use its argmax)."""
        if isinstance(self.head, TagHead):
            return self.head.loss(z, y)
        if self.config.head == "rbf-multi":
            return F.binary_cross_entropy_with_logits(z, y.to(z.dtype))
        return F.cross_entropy(z, y.argmax(-1))

    def probabilities_from_logits(self, z: Tensor) -> Tensor:
        if isinstance(self.head, TagHead):
            return self.head.probabilities(z)
        if self.config.head == "rbf-multi":
            return torch.sigmoid(z)
        return torch.softmax(z, -1)

    @torch.no_grad()
    def logits(self, x: Tensor, batch: int = 256) -> Tensor:
        self.eval()
        return torch.cat([self(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0, len(self.labels))

    @torch.no_grad()
    def probabilities(self, x: Tensor, batch: int = 256) -> np.ndarray:
        return self.probabilities_from_logits(self.logits(x, batch)).cpu().numpy()

    def class_points(self) -> np.ndarray:
        """What a learned hierarchy clusters: prototypes, or the linear layer's weight rows."""
        if isinstance(self.head, RBFPrototypes):
            return self.head.centres()
        lin = self.head.linear if isinstance(self.head, TagHead) else self.head
        return lin.weight.detach().cpu().numpy()


@register("tagger-cpu")
def tagger_cpu(**overrides) -> TaggerNet:
    return TaggerNet(TaggerConfig(**overrides))
