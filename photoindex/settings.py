"""One place for infrastructure settings; everything reads them from here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Infrastructure settings, read from `PHOTOINDEX_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="PHOTOINDEX_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("./photoindex-data")
    prefect_api_url: str | None = Field(
        default=None,
        description="Prefect API to use; unset means the CLI supervises a local server.",
    )
    prefect_port: int = 4200
    qdrant_url: str | None = Field(default=None, description="Qdrant server; unset = local mode")
    qdrant_path: Path | None = Field(default=None, description="Local Qdrant folder")

    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "laion2b_s34b_b79k"
    clip_config: Path | None = None
    clip_batch_size: int = 16  # measured: 8, 16 and 32 run equally fast; 16 reports finer

    face_detector: Path | None = None
    face_encoder: Path | None = None
    face_pack: Path | None = Field(
        default=None, description="Folder of an InsightFace model pack, e.g. buffalo_l"
    )
    face_det_size: int = 640
    # Measured on the test photos: real faces score 0.83-0.90, the one false face (galaxies) 0.62.
    face_det_threshold: float = 0.7
    face_batch_size: int = 16

    cluster_min_cluster_size: int = 2
    # Measured on the test photos (9 people): any epsilon in 0.5-1.0 splits them perfectly;
    # 0.0 splits one person into exact-duplicate pairs.
    cluster_epsilon: float = 0.8
    cluster_min_similarity: float = 0.45

    threads: int = 2
    max_image_pixels: int = 200_000_000
    progress_interval_s: float = 1.0

    library_roots: list[Path] = Field(default_factory=list)
    stall_after_s: float = 120.0
    fail_after_s: float = Field(
        default=900.0,
        description="A running session silent this long is reported failed (its process died).",
    )
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(
        default=None, description="An existing Dask scheduler; unset = a local cluster"
    )
    dask_workers: int = Field(default=2, description="Workers of the local Dask cluster")
    model_idle_s: float = Field(
        default=300.0,
        description="The warm indexer unloads models idle this long (0 = never), as Immich does",
    )

    @property
    def batches_in_flight(self) -> int:
        """How many batches a phase keeps read or computed at once: enough to overlap
        reading with computing on threads, two per worker on Dask."""
        return 2 * self.dask_workers if self.task_runner == "dask" else max(2, self.threads)

    @property
    def qdrant_dir(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"

    @property
    def catalog_dir(self) -> Path:
        return self.data_dir / "catalog"

    @property
    def crops_dir(self) -> Path:
        return self.data_dir / "crops"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def locks_dir(self) -> Path:
        return self.data_dir / "locks"

    @property
    def prefect_home(self) -> Path:
        return self.data_dir / "prefect"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, created once."""
    return Settings()
