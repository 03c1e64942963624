"""The one settings object of the project (paths, device, ports, limits).

Every value can be overridden by an environment variable prefixed with
``SHAPESEARCH_`` (e.g. ``SHAPESEARCH_LIBRARY=../shared/shape_library``) or by a
``.env`` file in the working directory.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, where the OS has one)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHAPESEARCH_", env_file=".env", extra="ignore", env_parse_none_str="none")

    # Where things live.
    data_dir: Path = Field(REPO_ROOT / "var", description="catalog, normalised meshes, index, jobs")
    library: Path | None = Field(
        None,
        description="a mesh folder (MANIFEST.json, category/*.ext, ModelNet, ShapeNetCore or "
        "PASCAL3D+ layout) imported on start; the generated default library when unset",
    )
    default_library: bool = Field(True, description="generate and import the project's own 27 shapes on first start")
    photos_dir: Path | None = Field(None, description="background images for synthetic photos")

    # Compute.
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:n]' for torch")
    render_backend: str = Field("egl", description="pyrender platform: 'egl' or 'osmesa'")
    render_size: int = Field(128, ge=16, le=1024, description="side of grid renderings, pixels")
    matching_weights: Path = Field(REPO_ROOT / "models" / "weights" / "matching.pt", description="shipped matching network")
    viewpoint_weights: Path = Field(REPO_ROOT / "models" / "weights" / "viewpoint.pt", description="shipped S1 viewpoint model")
    rotation_weights: Path = Field(REPO_ROOT / "models" / "weights" / "rotation.pt", description="shipped S3 rotation model")
    normals_weights: Path = Field(REPO_ROOT / "models" / "weights" / "normals.pt", description="shipped S2 surface-normal model")
    tagger_weights: Path = Field(REPO_ROOT / "models" / "weights" / "tagger.pt", description="shipped quasibinary tagger")
    hierarchy_weights: Path = Field(REPO_ROOT / "models" / "weights" / "hierarchy.pt", description="shipped Vec2Bundle model and tree")
    # The search answers no_match when the tagger says none of its categories is in the photo (its
    # calibrated threshold); False leaves the decision to the matching score alone.
    search_uses_tagger: bool = Field(True, description="no_match when the tagger finds none of its categories")

    # Viewpoint prior in the search, chosen by `python -m models.eval_prior` (docs/viewpoint_prior.md):
    # rank by the weighted mean of the matcher's and the S1 prediction's distance estimates, the prior's
    # weight a flat 4 (Acc@π/6 0.48 -> 0.66, category known), scoring only the grid
    # poses within 45° of the prediction (2 % of them, same accuracy on the tuning photos). Both None
    # turns the prior off. tests/test_settings_follow_evaluations.py keeps these equal to the tuned ones.
    search_prior_weight: float | None = Field(4.0, ge=0, description="weight of the S1 prior's distance estimate against the matcher's (None: no soft prior)")
    search_prior_confidence_power: float = Field(0.0, ge=0, description="the soft prior's weight is scaled by the S1 confidence to this power (0: not scaled)")
    search_prior_flip_cost: float | None = Field(None, ge=0, description="degrees the soft prior charges for the front/back flip of the S1 viewpoint (None: flips get no discount)")
    search_prior_radius_deg: float | None = Field(45.0, gt=0, le=180, description="score only grid poses this close to the S1 viewpoint (None: no cut)")
    search_prior_flips: bool = Field(False, description="the cut also keeps the poses near the front/back flip of the S1 viewpoint")

    # Refinement renders 27 poses around each of this many best grid answers; eval_prior measured the
    # best 3 no more accurate than the best one (within a photo in 120) at three times the rendering.
    search_refine_top: int = Field(1, ge=1, le=10, description="grid answers the refinement step moves (27 rendered poses each)")

    # FAISS first stage (shape_library/ann.py, docs/benchmarks.md): used when a search has at least
    # this many candidate views (None: never); below it the search scores every candidate exactly.
    ann_min_views: int | None = Field(500_000, ge=1, description="candidate views from which the search uses the FAISS first stage")
    ann_top_n: int = Field(16000, ge=1, description="views FAISS hands to the exact re-ranking")
    ann_nprobe: int = Field(16, ge=1, description="IVF lists visited per query")
    ann_ivf_min_views: int = Field(1_000_000, ge=1, description="library views from which the index is IVF (exact flat below)")
    embedding_weights: Path = Field(REPO_ROOT / "models" / "weights" / "embedding.pt", description="shipped first-stage embedding")

    # Service.
    index_on_start: bool = Field(True, description="build missing view index and codes in the background on start")
    index_workers: int = Field(0, ge=0, le=64, description="processes rendering the missing views on start "
                               "(0: one per CPU core, at most 8; 1: in the API process)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # Jobs and workers.
    jobs_db_url: str | None = Field(None, description="SQLAlchemy URL of the job store; SQLite in data_dir when unset")
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "SHAPESEARCH_REDIS_URL"),
        description="Redis for Celery's broker and results; switches the executor to Celery",
    )
    job_executor: str = Field(
        "auto", pattern="^(auto|thread|celery)$",
        description="'thread': in-process worker threads; 'celery': Celery workers (SQLite broker unless REDIS_URL); "
        "'auto': celery when REDIS_URL is set, else thread",
    )
    job_threads: int = Field(1, ge=1, le=64, description="in-process worker threads (thread executor)")
    item_lease_s: float = Field(300.0, gt=0, description="an item running longer than this is presumed lost and re-queued")
    requeue_after_s: float = Field(600.0, gt=0, description="a queued item not picked up for this long is sent again")
    sweep_interval_s: float = Field(15.0, gt=0, description="how often the API looks for lost items (celery executor)")
    visibility_timeout_s: int = Field(3600, ge=1, description="Redis: unacknowledged tasks come back after this long")
    job_max_attempts: int = Field(3, ge=1, le=20, description="tries per item on transient errors, with backoff")
    job_index_wait_s: float = Field(1800.0, ge=0, description="a search item of a job waits (without using up its "
                                    "attempts) up to this long after the job was made for shapes still being indexed; "
                                    "then it answers from the indexed ones, saying so in its result's notice")
    max_job_items: int = Field(10_000, ge=1, description="images per job")
    max_archive_bytes: int = Field(2 * 2**30, ge=1, description="zip size, compressed and uncompressed")

    # Access.
    api_keys_file: Path | None = Field(None, description="hashed API keys (JSON); data_dir/api_keys.json when unset")
    api_key_hashes: str | None = Field(None, description="extra keys as 'name:sha256hex,...' (e.g. from a secret store)")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty = CORS off")
    rate_limit_per_minute: float = Field(1200, ge=0, description="requests per minute per client on /v1 (0 = off)")
    rate_limit_burst: int = Field(120, ge=1)
    max_inflight_searches: int = Field(8, ge=1, description="searches computing at once; more get 503 + Retry-After")

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

    @property
    def api_keys_path(self) -> Path:
        return self.api_keys_file or self.data_dir / "api_keys.json"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def jobs_url(self) -> str:
        return self.jobs_db_url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"

    @property
    def executor(self) -> str:
        if self.job_executor != "auto":
            return self.job_executor
        return "celery" if self.redis_url else "thread"

    @property
    def broker_url(self) -> str:
        return self.redis_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"

    @property
    def result_backend(self) -> str:
        return self.redis_url or f"db+sqlite:///{self.data_dir / 'celery-results.sqlite'}"

    def index_worker_count(self) -> int:
        """Render processes for a build of several shapes: a fresh install is searchable sooner (one process
        renders about 190 views/s on 2 cores, two 340: docs/benchmarks.md)."""
        return self.index_workers or max(1, min(8, usable_cores()))

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
