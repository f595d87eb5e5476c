"""One place for infrastructure settings; everything reads them from here."""

from __future__ import annotations

import json
import os
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "PHOTOINDEX_"
MIN_TOKEN_CHARS = 16


class Settings(BaseSettings):
    """Infrastructure settings, read from `PHOTOINDEX_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
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
    clip_precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="CLIP's number format; auto = bfloat16 where the CPU computes it natively",
    )

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
    progress_interval_s: float = 0.25

    library_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders the API may index: separated by os.pathsep, or a JSON list.",
    )
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

    # The API's doors (api/security.py) and limits (api/server.py).
    api_host: str = Field(default="127.0.0.1", description="Address `photoindex serve` binds")
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token (and login) the API requires; needed to bind beyond loopback.",
    )
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Host names the API answers to, besides loopback and its bind address.",
    )
    api_max_body_bytes: int = Field(default=65_536, ge=1024, description="Largest request body")
    api_max_connections: int = Field(
        default=256, ge=4, description="Open connections at most; more are closed at once"
    )
    api_header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's headers must arrive within this time"
    )
    api_keep_alive_s: int = Field(default=5, ge=1, description="Idle keep-alive connections close")
    api_max_header_bytes: int = Field(default=16_384, ge=1024, description="Largest header block")

    # Housekeeping (tasks/housekeeping.py, `photoindex gc`).
    gc_max_parts: int = Field(
        default=64, ge=2, description="A catalog table with more Parquet parts is compacted"
    )
    gc_keep_runs_days: float = Field(
        default=30.0, ge=0, description="Finished flow runs older than this are deleted"
    )
    gc_max_run_deletions: int = Field(
        default=1000, ge=0, description="At most this many flow runs deleted per housekeeping"
    )
    gc_keep_results_days: float = Field(
        default=7.0, ge=0, description="Persisted batch results older than this are deleted"
    )
    gc_max_log_bytes: int = Field(
        default=10_000_000, ge=1024, description="A log file larger than this is rotated"
    )
    gc_keep_logs: int = Field(default=3, ge=0, description="Rotated copies kept of each log")
    gc_keep_session_logs: int = Field(
        default=50, ge=0, description="Session log files kept, newest first"
    )

    @field_validator("api_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters")
        return value

    @field_validator("library_roots", "api_allowed_hosts", mode="before")
    @classmethod
    def _path_list(cls, value: Any) -> Any:
        """A JSON list, or items separated by os.pathsep (as PATH is); blanks are dropped."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item for item in text.split(os.pathsep) if item.strip()]

    @property
    def batches_in_flight(self) -> int:
        """How many batches a phase keeps read or computed at once: enough to overlap
        reading with computing on threads, two per worker on Dask."""
        return 2 * self.dask_workers if self.task_runner == "dask" else max(2, self.threads)

    @property
    def clip_architecture(self) -> str:
        """The CLIP architecture: `clip_model` when set, else the stem of `clip_config`
        (open_clip names a config file's architecture by its file name)."""
        if self.clip_config is not None and "clip_model" not in self.model_fields_set:
            return self.clip_config.stem
        return self.clip_model

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

    @property
    def prefect_server_log(self) -> Path:
        """The log of the local Prefect server the CLI starts for this data folder."""
        return self.prefect_home / "server.log"


def _expected(annotation: Any) -> str:
    """What a setting of this type looks like, in words."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Annotated:
        return _expected(args[0])
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _expected(args[0])
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        return f"items separated by {os.pathsep!r}, or a JSON list such as [\"/photos\"]"
    words = {
        int: "a whole number",
        float: "a number",
        bool: "true or false",
        Path: "a path",
        SecretStr: f"a secret of {MIN_TOKEN_CHARS} characters or more",
    }
    return words.get(annotation, "text")


def settings_errors(error: ValidationError) -> list[str]:
    """One line per invalid setting: the variable, what it holds and the form expected."""
    lines = []
    for e in error.errors():
        loc = [str(part) for part in e.get("loc", ())]
        name = loc[0] if loc else "?"
        field = Settings.model_fields.get(name)
        var = ENV_PREFIX + name.upper()
        given = os.environ.get(var)
        secret = field is not None and field.annotation == SecretStr | None
        shown = f"={given!r}" if given is not None and len(given) <= 80 and not secret else ""
        why = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        expected = _expected(field.annotation) if field is not None else "a valid value"
        lines.append(f"{var}{shown} is invalid ({why}); expected {expected}")
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, created once."""
    return Settings()
