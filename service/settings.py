"""The one configuration object. Built once by the CLI (or a test) and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("forgetwatch", appauthor=False))


class Settings(BaseSettings):
    """forgetwatch settings, read from `FORGETWATCH_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="FORGETWATCH_", extra="ignore")

    database_url: str | None = None
    """SQLAlchemy URL of an external PostgreSQL (`postgresql+psycopg://user@host:port/db`).
    Unset: an embedded PostgreSQL is started inside the data dir."""

    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where the embedded database, uploads, caches and the local token live."""

    checkpoint_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Folders checkpoint URIs may point into (comma- or colon-separated). `<data_dir>/checkpoints`
    is always allowed; uploads land there."""

    host: str = "127.0.0.1"
    """Address `forgetwatch serve` binds to."""

    port: int = 8700
    """Port `forgetwatch serve` listens on."""

    max_upload_bytes: int = 64 * 2**30
    """Largest single checkpoint file accepted by the upload endpoint."""

    max_request_bytes: int = 16 * 2**20
    """Largest JSON request body; larger ones get 413."""

    max_samples_per_request: int = 2000
    """Most sample items one `POST /v1/runs/{run}/samples` may carry."""

    protect_metrics: bool = False
    """Require a read token on /metrics."""

    worker_concurrency: int = 2
    """Jobs one worker process runs at once."""

    worker_heartbeat_seconds: float = 5.0
    """How often a worker tells the database it is alive."""

    stalled_after_seconds: float = 30.0
    """A worker silent this long is considered dead; its running jobs are retried."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""

    @field_validator("checkpoint_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for chunk in value.split(",") for p in chunk.split(os.pathsep)]
            return [p.strip() for p in parts if p.strip()]
        return value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def uploads_dir(self) -> Path:
        return self.checkpoints_dir / "_uploads"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def local_token_file(self) -> Path:
        return self.data_dir / "local-token"

    @property
    def allowed_roots(self) -> list[Path]:
        """Resolved allow-list for checkpoint URIs."""
        roots = [self.checkpoints_dir, *self.checkpoint_roots]
        return [Path(os.path.realpath(r.expanduser())) for r in roots]
