"""The one configuration object. Built once by the CLI (or a test) and passed down."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from drift.hazard import FittedHazard
from drift.remote import normal_uri

ENV_PREFIX = "FORGETWATCH_"
Analysis = Literal["params", "probes", "samples"]
ANALYSES: tuple[Analysis, ...] = ("params", "probes", "samples")


class SettingsError(ValueError):
    """One line per invalid setting, each naming its environment variable and what it accepts."""


SHIPPED_CALIBRATION = Path(__file__).with_name("shipped_calibration.json")


def _shipped_threshold() -> float:
    """The alarm threshold calibrated on the project's own corpus (`forgetwatch calibrate`)."""
    return float(json.loads(SHIPPED_CALIBRATION.read_text())["alarm_probability"])


@functools.cache
def forecast_model_in(path: Path) -> FittedHazard:
    """The forecast model (`drift.hazard.FittedHazard`) a calibration file carries (read once per process:
    an installed calibration takes effect at the next start)."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or "forecast_model" not in document:
        raise ValueError(f"{path} holds no forecast model; run `forgetwatch calibrate` again or delete it")
    try:
        return FittedHazard.from_dict(document["forecast_model"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}; run `forgetwatch calibrate` again or delete it") from None


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("forgetwatch", appauthor=False))


def _remote_prefix(value: str) -> str:
    """`s3://bucket[/prefix]` or `gs://bucket[/prefix]`, normalised without a trailing slash; anything
    else is refused."""
    try:
        return normal_uri(value)
    except ValueError as error:
        raise ValueError(f"FORGETWATCH_CHECKPOINT_ROOTS: {error} (a folder, or the object storage prefix this "
                         "service reads)") from None


class Settings(BaseSettings):
    """forgetwatch settings, read from `FORGETWATCH_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @classmethod
    def from_environment(cls) -> Settings:
        """The settings from `FORGETWATCH_*`; SettingsError naming each variable that is invalid."""
        try:
            return cls()
        except ValidationError as error:
            lines = []
            for problem in error.errors():
                field = str(problem["loc"][0]) if problem["loc"] else "?"
                given = problem.get("input")
                lines.append(f"{ENV_PREFIX}{field.upper()}={given!s}: {problem['msg']}")
            raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None

    database_url: str | None = None
    """SQLAlchemy URL of an external PostgreSQL (`postgresql+psycopg://user@host:port/db`).
    Unset: an embedded PostgreSQL is started inside the data dir."""

    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where the embedded database, uploads, caches and the local token live."""

    checkpoint_roots: Annotated[list[Path | str], NoDecode] = Field(default_factory=list)
    """Folders checkpoint URIs may point into, and object storage prefixes (`s3://bucket/prefix`,
    `gs://bucket/prefix`) (comma-separated; folders also colon-separated). `<data_dir>/checkpoints` is
    always allowed; uploads land there. Object storage credentials come from the standard environment
    (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, ...; `GOOGLE_APPLICATION_CREDENTIALS`,
    `STORAGE_EMULATOR_HOST`, ...)."""

    hf_cache_dir: Path | None = None
    """The Hugging Face hub cache `hf://org/name@revision` URIs resolve in (only what it already holds;
    nothing is downloaded). Unset: huggingface_hub's default (`HF_HUB_CACHE`). Its folder must also be
    in FORGETWATCH_CHECKPOINT_ROOTS."""

    cache_max_bytes: int = Field(20 * 2**30, ge=0)
    """The most bytes of object-storage checkpoints kept on local disk for probe jobs (least recently
    used first out). Parameter drift reads object storage with range requests and needs none."""

    host: str = "127.0.0.1"
    """Address `forgetwatch serve` binds to."""

    port: int = Field(8700, ge=0, le=65535)
    """Port `forgetwatch serve` listens on."""

    max_upload_bytes: int = Field(64 * 2**30, ge=1)
    """Largest single checkpoint file accepted by the upload endpoint (`PUT .../files/{filename}` only)."""

    max_request_bytes: int = Field(16 * 2**20, ge=1)
    """Largest request body on every other route; larger ones get 413, checked before the body is read."""

    max_samples_per_request: int = Field(2000, ge=1, le=100_000)
    """Most sample items one `POST /v1/runs/{run}/samples` may carry."""

    token_cache_seconds: float = Field(5.0, ge=0, le=300)
    """How long an API process trusts a token the database accepted without looking it up again;
    a revoked token is refused by every process within this many seconds (an expired one at once).
    0: every request looks its token up."""

    protect_metrics: bool | None = None
    """Require a read token on /metrics. Unset: required unless `host` is a loopback address."""

    public_pages: bool | None = None
    """Serve the run pages (`/`, `/runs/{name}`) without a token. Unset: public only while `host` is a
    loopback address; anywhere else they need a read token."""

    public_docs: bool | None = None
    """Serve `/docs` and `/openapi.json` without a token. Unset: public only while `host` is a loopback address."""

    worker_concurrency: int = Field(2, ge=1, le=256)
    """Jobs one worker process runs at once."""

    worker_nice: int = Field(10, ge=0, le=19)
    """Scheduling niceness of `forgetwatch worker`: drift work yields the CPU to ingestion."""

    worker_metrics_port: int = Field(0, ge=0, le=65535)
    """Port on which `forgetwatch worker` serves its job-duration metrics to Prometheus (compose: 8701);
    0: none. A worker inside `forgetwatch serve` reports them on the API's /metrics instead."""

    worker_metrics_host: str = "0.0.0.0"
    """Address the worker's metrics port binds to."""

    worker_heartbeat_seconds: float = Field(5.0, gt=0, le=3600)
    """How often a worker tells the database it is alive."""

    stalled_after_seconds: float = Field(30.0, gt=0, le=86400)
    """A worker silent this long is considered dead; its running jobs are retried."""

    analyses: Annotated[list[Analysis], NoDecode] = Field(default_factory=lambda: list(ANALYSES))
    """The analyses new checkpoints and samples get (comma-separated: params, probes, samples). A
    service that only builds a calibration corpus needs `probes` (the forecast and its labels read
    nothing else); what is not listed is stored but never analysed."""

    spectral: bool = True
    """Compute spectral drift (top-k SVD) of 2-D weights; off makes parameter jobs much cheaper."""

    spectral_k: int = Field(64, ge=1, le=4096)
    """Top-k singular values/vectors for spectral drift."""

    spectral_max_elements: int = Field(1 << 26, ge=1)
    """Matrices larger than this are skipped by the spectral pass (reported as skipped)."""

    param_part_elements: int = Field(1 << 30, ge=1)
    """Parameters per parameter-drift job: shards larger than this are split across jobs."""

    probe_device: str = "auto"
    """Device for probe jobs: "auto" (a GPU when present), "cpu", "cuda:0", ..."""

    probe_topk: int = Field(64, ge=1, le=100_000)
    """Base log-probs kept per position in the probe cache (the rest is summarised as tail mass)."""

    forecast_alarm_probability: float = Field(default_factory=lambda: _shipped_threshold(), gt=0, lt=1)
    """A forgetting forecast at or above this probability is an alarm (`ForgettingPredicted`);
    `last_safe_step` is the checkpoint before the first alarm, predicted or detected. The default is
    `forgetwatch calibrate`'s conformal threshold on the project's own corpus
    (`service/shipped_calibration.json`, docs/risk_model.md), unless a refit on your runs was installed
    in the data dir."""

    _calibration: Path = PrivateAttr(default=SHIPPED_CALIBRATION)

    @model_validator(mode="after")
    def _installed_calibration(self) -> Settings:
        """The calibration `forgetwatch calibrate` installed in the data dir, if any: its forecast model and,
        unless the variable is set, its threshold."""
        path = self.data_dir / "alarm_threshold.json"
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return self
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is unreadable ({error}); run `forgetwatch calibrate` again or delete it") from None
        if not (isinstance(document, dict) and document.get("installed") is True):
            return self
        forecast_model_in(path)  # a file without a valid model is refused now, not at the first assessment
        self._calibration = path
        value = document.get("alarm_probability")
        if "forecast_alarm_probability" not in self.model_fields_set:
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ValueError(f"{path}: alarm_probability must be a number in (0, 1), got {value!r}")
            self.forecast_alarm_probability = float(value)
        return self

    @property
    def forecast_model(self) -> FittedHazard:
        """The hazard model that scores the forgetting forecast: the installed calibration's, else the shipped one."""
        return forecast_model_in(self._calibration)

    forecast_horizon_checkpoints: int = Field(3, ge=1, le=50)
    """The forecast is the probability that forgetting is detected within this many checkpoints."""

    forgetting_relative_drop: float = Field(0.10, gt=0, lt=1)
    """What counts as forgetting: this relative drop of ood accuracy (or reference log-likelihood)."""

    forecast_ood_kl_nats: float = Field(0.5, gt=0)
    """Forecast threshold for the ood probe forward KL (nats per token)."""

    forecast_param_rel_l2: float = Field(0.05, gt=0)
    """Forecast threshold for global relative L2 parameter drift."""

    metrics_run_ttl_seconds: float = Field(7 * 86400, gt=0)
    """Runs with no new checkpoint for this long drop out of /metrics (their data stays in the DB)."""

    metrics_max_blocks: int = Field(8, ge=0, le=1000)
    """Per-block drift is exported for at most this many (the most drifted) blocks per run."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity."""

    @field_validator("analyses", mode="before")
    @classmethod
    def _split_analyses(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("checkpoint_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for chunk in value.split(",") for p in ([chunk] if "://" in chunk else chunk.split(os.pathsep))]
            value = [p.strip() for p in parts if p.strip()]
        if not isinstance(value, list):
            return value
        return [_remote_prefix(r) if isinstance(r, str) and "://" in r else Path(r) for r in value]

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def on_loopback(self) -> bool:
        """True when `host` only accepts connections from this machine."""
        return is_loopback(self.host)

    @property
    def pages_are_public(self) -> bool:
        return self.on_loopback if self.public_pages is None else self.public_pages

    @property
    def metrics_are_public(self) -> bool:
        return self.on_loopback if self.protect_metrics is None else not self.protect_metrics

    @property
    def docs_are_public(self) -> bool:
        return self.on_loopback if self.public_docs is None else self.public_docs

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
        """Resolved allow-list of local folders for checkpoint URIs."""
        roots = [self.checkpoints_dir, *(r for r in self.checkpoint_roots if isinstance(r, Path))]
        return [Path(os.path.realpath(r.expanduser())) for r in roots]

    @property
    def remote_prefixes(self) -> list[str]:
        """Allowed object storage prefixes (`s3://bucket/prefix`, `gs://bucket/prefix`, no trailing slash)."""
        return [r for r in self.checkpoint_roots if isinstance(r, str)]

    @property
    def confinement_roots(self) -> tuple[Path | str, ...]:
        """Everything a worker may read: the local roots and the object storage prefixes."""
        return (*self.allowed_roots, *self.remote_prefixes)

    @property
    def remote_cache_dir(self) -> Path:
        return self.cache_dir / "remote"

def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; anything else (0.0.0.0, a LAN address, a name) may be reachable
    by others."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False
