"""A small learned embedding for the FAISS first stage of the search.

The shipped matching network (models.matching) scores a (photo, view) pair as
``fc . relu(photo_code + render_code) + b`` over 1,024-value codes: exact, but it has to
touch every candidate.  This module maps the same two codes into R^d (unit vectors)
so that the inner product <e_photo, e_render> ranks candidates like minus the fused
score; it is trained by distillation from the fused head (models.train_embedding) on
the same synthetic photos and rendered views.  Because the render side reads only the
stored render code, the embeddings of a library are derived from its FeatureIndex
without rendering anything, and re-derived whenever the matching weights change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .registry import register


@dataclass(frozen=True)
class EmbeddingConfig:
    code_dim: int = 1024      # MatchingNet.code_dim of the matching weights it was trained for
    dim: int = 32             # embedding size (FAISS vectors)
    hidden: int = 512         # width of the photo side's hidden layer (0: linear)
    render_hidden: int = 0    # width of the render side's hidden layer; 0 = linear, so the 25 M view
                              # embeddings of a large library cost one 1,024 x d product each

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(code_dim: int, hidden: int, dim: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(code_dim, dim)
    return nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class CodeEmbedding(nn.Module):
    """Photo and render projections of MatchingNet codes into one inner-product space."""

    def __init__(self, config: EmbeddingConfig = EmbeddingConfig()):
        super().__init__()
        self.config = config
        self.photo = _mlp(config.code_dim, config.hidden, config.dim)
        self.render = _mlp(config.code_dim, config.render_hidden, config.dim)
        # Code scale: render codes have magnitudes ~1e-1..1; a fixed input scale keeps the MLP well conditioned.
        self.register_buffer("photo_mean", torch.zeros(config.code_dim))
        self.register_buffer("render_mean", torch.zeros(config.code_dim))
        self.register_buffer("photo_std", torch.ones(()))
        self.register_buffer("render_std", torch.ones(()))
        self.log_scale = nn.Parameter(torch.tensor(3.0))   # softmax temperature of training only

    def set_stats(self, photo_codes: Tensor, render_codes: Tensor) -> None:
        self.photo_mean.copy_(photo_codes.float().mean(0))
        self.render_mean.copy_(render_codes.float().mean(0))
        self.photo_std.copy_((photo_codes.float() - self.photo_mean).std())
        self.render_std.copy_((render_codes.float() - self.render_mean).std())

    def embed_photo(self, photo_codes: Tensor) -> Tensor:
        x = (photo_codes.float() - self.photo_mean) / self.photo_std
        return nn.functional.normalize(self.photo(x), dim=-1)

    def render_raw(self, render_codes: Tensor) -> Tensor:
        """The render side before normalisation (affine in the code when render_hidden = 0)."""
        return self.render((render_codes.float() - self.render_mean) / self.render_std)

    def embed_render(self, render_codes: Tensor) -> Tensor:
        return nn.functional.normalize(self.render_raw(render_codes), dim=-1)

    @torch.no_grad()
    def embed_render_batched(self, render_codes: Tensor, batch: int = 65536) -> Tensor:
        return torch.cat([self.embed_render(render_codes[i:i + batch]) for i in range(0, len(render_codes), batch)]) \
            if len(render_codes) else torch.zeros(0, self.config.dim)


@register("embedding")
def embedding(**overrides) -> CodeEmbedding:
    return CodeEmbedding(EmbeddingConfig(**overrides))
