"""Thin, idempotent tasks: load inputs, call the engine, write results (replacing earlier ones)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import procrastinate
from sqlalchemy import Engine, exc
from sqlalchemy.orm import Session, sessionmaker

from service.db import queries
from service.errors import PermanentJobError
from service.settings import Settings

log = logging.getLogger("forgetwatch")
blueprint = procrastinate.Blueprint()

# Only infrastructure hiccups are worth retrying; a bad checkpoint stays bad.
TRANSIENT = procrastinate.RetryStrategy(
    max_attempts=6,
    exponential_wait=2,
    retry_exceptions={exc.OperationalError, exc.InterfaceError, TimeoutError, ConnectionError},
)


@dataclass(frozen=True)
class WorkerServices:
    """What tasks need, handed to the worker as procrastinate's additional context."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]


def _services(context: procrastinate.JobContext) -> WorkerServices:
    return context.additional_context["services"]


@blueprint.task(name="validate_checkpoint", queue="params", pass_context=True, retry=TRANSIENT)
def validate_checkpoint(context: procrastinate.JobContext, checkpoint_id: int) -> None:
    """Check that the checkpoint's files are there and readable; mark it ready or failed."""
    services = _services(context)
    with services.sessions.begin() as session:
        checkpoint = queries.mark_checkpoint(session, checkpoint_id=checkpoint_id, status="processing")
        if checkpoint is None:
            log.warning("action=validate_checkpoint_skipped checkpoint=%s reason=deleted", checkpoint_id)
            return
        path = Path(checkpoint.uri)
    try:
        size = _readable_size(path)
    except PermanentJobError as error:
        with services.sessions.begin() as session:
            queries.mark_checkpoint(session, checkpoint_id=checkpoint_id, status="failed", error=str(error))
        raise
    with services.sessions.begin() as session:
        queries.mark_checkpoint(session, checkpoint_id=checkpoint_id, status="ready", size_bytes=size)
    log.info("action=checkpoint_validated checkpoint=%s bytes=%s", checkpoint_id, size)


def _readable_size(path: Path) -> int:
    """Read every byte once (an unreadable sector fails here, not halfway through drift work) and
    check that each safetensors file is as long as its header says."""
    if not path.exists():
        raise PermanentJobError(f"checkpoint path {path} does not exist on the worker's disk")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise PermanentJobError(f"checkpoint folder {path} is empty")
    total = 0
    for file in files:
        try:
            with open(file, "rb") as handle:
                while chunk := handle.read(READ_CHUNK_BYTES):
                    total += len(chunk)
        except OSError as error:
            raise PermanentJobError(f"cannot read checkpoint file {file}: {error.strerror}") from error
        if file.suffix == ".safetensors":
            _check_safetensors_length(file)
    return total


READ_CHUNK_BYTES = 16 * 2**20


def _check_safetensors_length(file: Path) -> None:
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header_len < 2 or 8 + header_len > size:
            raise PermanentJobError(f"{file} is not a safetensors file (bad header length); re-save it")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError as error:
            raise PermanentJobError(f"{file} has a corrupt safetensors header: {error}") from error
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + header_len + max(ends, default=0)
    if expected != size:
        raise PermanentJobError(
            f"{file} is {size} bytes but its header describes {expected}: truncated or still being written"
        )
