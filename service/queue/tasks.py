"""What every task shares: the blueprint, the retry policy, the worker's services.
Tasks live in one module per analysis (param_tasks, ...); each is thin and idempotent."""

from __future__ import annotations

from dataclasses import dataclass

import procrastinate
from sqlalchemy import Engine, exc
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings

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
