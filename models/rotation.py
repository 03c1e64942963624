"""S3 rotation (method §2): the 3D rotation of a rendered shape as a unit quaternion.

q = (a, b, c, d) with a > 0 (q and -q are the same rotation); S_exp predicts |q| and a
classifier the 8 sign combinations of (b, c, d). The rotation is the contract's library ->
camera rotation R, so it converts to (azimuth, elevation, theta) and back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .geometry import matrix_to_quaternion, quaternion_to_matrix, standardize_quaternion
from .registry import register
from .spherical import S3_SIGNS, SphericalHead
from .viewpoint import backbone_and_neck


@dataclass(frozen=True)
class RotationConfig:
    input_size: int = 64
    widths: tuple[int, int, int, int, int] = (32, 64, 96, 96, 64)
    hidden: int = 256
    head: str = "exp"            # 'exp', 'flat' or 'direct'
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class RotationNet(nn.Module):
    def __init__(self, config: RotationConfig = RotationConfig()):
        super().__init__()
        self.config = config
        self.backbone, self.neck = backbone_and_neck(1, config)
        self.head = SphericalHead(config.hidden, S3_SIGNS, config.head)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.head(self.neck(self.backbone(x)))

    def loss(self, x: Tensor, R: Tensor) -> Tensor:
        q = standardize_quaternion(matrix_to_quaternion(R.double())).float()
        return self.head.loss(self(x), q)

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 4) unit quaternions (w >= 0) and (B, 3, 3) rotation matrices."""
        q = SphericalHead.normalise(self(x)["pred"])
        q = standardize_quaternion(q)
        return q, quaternion_to_matrix(q.double()).float()


@register("rotation-cpu")
def rotation_cpu(**overrides) -> RotationNet:
    return RotationNet(RotationConfig(**overrides))
