"""What every task shares: the blueprint, the retry policy, the worker's services.
Tasks live in one module per analysis (param_tasks, ...); each is thin and idempotent."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procrastinate
from sqlalchemy import Engine, exc
from sqlalchemy.orm import Session, sessionmaker

from drift.confined import CheckpointError
from drift.remote import RemotePath
from service.errors import ForgetwatchError
from service.paths import resolve_location
from service.queue.defer import enqueue_risk
from service.settings import Settings

log = logging.getLogger("forgetwatch")

blueprint = procrastinate.Blueprint()

# Only infrastructure hiccups are worth retrying; a bad checkpoint stays bad.
TRANSIENT_ERRORS = (exc.OperationalError, exc.InterfaceError, TimeoutError, ConnectionError)
TRANSIENT = procrastinate.RetryStrategy(max_attempts=6, exponential_wait=2, retry_exceptions=set(TRANSIENT_ERRORS))


@dataclass(frozen=True)
class WorkerServices:
    """What tasks need, handed to the worker as procrastinate's additional context."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]


def services_of(context: procrastinate.JobContext) -> WorkerServices:
    return context.additional_context["services"]


class AnalysisFailed(Exception):
    """The analysis was marked failed with this message; the job ends failed and is not retried."""


def fail_analysis(services: WorkerServices, *, checkpoint_id: int, kind: str, message: str,
                  status: str = "failed") -> None:
    """Record why an analysis of a checkpoint ended without results; its risk is reassessed."""
    from service.db.param_drift import set_analysis

    with services.sessions.begin() as session:
        set_analysis(session, checkpoint_id=checkpoint_id, kind=kind, status=status, error=message)
        enqueue_risk(session, checkpoint_id)
    log.warning("action=analysis_%s kind=%s checkpoint=%s reason=%s", status, kind, checkpoint_id, message)


REASON_LIMIT = 500


def reason_of(error: BaseException) -> str:
    """What users are told about an error: ours say what to do; anything else is named by its type
    (with a short message), never with a traceback."""
    if isinstance(error, CheckpointError):
        return str(error)[:REASON_LIMIT]
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:REASON_LIMIT] if text else type(error).__name__


@contextlib.contextmanager
def failing_analysis(services: WorkerServices, *, checkpoint_id: int, kind: str) -> Iterator[None]:
    """The task boundary: any error but a transient one fails the analysis with its reason, so no
    parser error (overflow, recursion, type, memory) leaves it `processing`. Transient errors
    propagate for procrastinate to retry."""
    try:
        yield
    except (AnalysisFailed, *TRANSIENT_ERRORS):
        raise
    except Exception as error:
        message = reason_of(error)
        log.exception("action=analysis_error kind=%s checkpoint=%s", kind, checkpoint_id)
        fail_analysis(services, checkpoint_id=checkpoint_id, kind=kind, message=message)
        raise AnalysisFailed(message) from error


def forget_expired_idempotency_keys(services: WorkerServices) -> int:
    """Housekeeping with the sweep: idempotency records past their time (service.db.idempotency)."""
    from service.db.idempotency import forget_expired

    with services.sessions.begin() as session:
        return forget_expired(session)


def sweep_orphaned_analyses(services: WorkerServices) -> list[int]:
    """Fail analyses whose jobs all ended without a result (the task boundary could not run: the
    process died); their checkpoints' risk is reassessed."""
    from service.db.param_drift import fail_orphaned_analyses

    with services.sessions.begin() as session:
        touched = fail_orphaned_analyses(session)
        for checkpoint_id in touched:
            enqueue_risk(session, checkpoint_id)
    for checkpoint_id in touched:
        log.warning("action=orphaned_analysis_failed checkpoint=%s", checkpoint_id)
    return touched


def resolve_confined(services: WorkerServices, *, checkpoint_id: int, kind: str, uri: str,
                     what: str) -> Path | RemotePath:
    """`uri` on this worker's disk (or in object storage), re-checked against the allowed roots now
    (what was inside at registration may since have become a symlink elsewhere, or the allow-list
    may have changed); the analysis fails otherwise."""
    settings = services.settings
    try:
        return resolve_location(uri, settings.allowed_roots, settings.remote_prefixes,
                          hf_cache=settings.hf_cache_dir)
    except ForgetwatchError as error:
        message = f"{what}: {error.detail}"
        fail_analysis(services, checkpoint_id=checkpoint_id, kind=kind, message=message)
        raise AnalysisFailed(message) from error


def resolve_base(services: WorkerServices, *, checkpoint_id: int, kind: str, base_uri: str) -> Path | RemotePath:
    """The run's base model on this worker's disk, inside the allowed roots."""
    return resolve_confined(services, checkpoint_id=checkpoint_id, kind=kind, uri=base_uri, what="base model")
