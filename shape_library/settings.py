"""The one settings object of the project (paths, device, ports, limits).

Every value can be overridden by an environment variable prefixed with
``SHAPESEARCH_`` (e.g. ``SHAPESEARCH_LIBRARY=../shared/shape_library``) or by a
``.env`` file in the working directory.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHAPESEARCH_", env_file=".env", extra="ignore")

    # Where things live.
    data_dir: Path = Field(REPO_ROOT / "var", description="catalog, normalised meshes, index, jobs")
    library: Path | None = Field(
        None,
        description="a mesh folder (MANIFEST.json, category/*.ext, ModelNet, ShapeNetCore or "
        "PASCAL3D+ layout) imported on start; the generated default library when unset",
    )
    photos_dir: Path | None = Field(None, description="background images for synthetic photos")

    # Compute.
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:n]' for torch")
    render_backend: str = Field("egl", description="pyrender platform: 'egl' or 'osmesa'")
    render_size: int = Field(128, ge=16, le=1024, description="side of grid renderings, pixels")
    matching_weights: Path = Field(REPO_ROOT / "models" / "weights" / "matching.pt", description="shipped matching network")

    # Service.
    index_on_start: bool = Field(True, description="build missing view index and codes in the background on start")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # Limits on untrusted input.
    max_faces: int = Field(500_000, ge=1, description="reject meshes with more faces")
    max_mesh_bytes: int = Field(100 * 2**20, ge=1)
    max_upload_bytes: int = Field(20 * 2**20, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def meshes_dir(self) -> Path:
        return self.data_dir / "meshes"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def default_library_dir(self) -> Path:
        return self.data_dir / "default_library"

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
