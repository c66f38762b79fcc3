"""Enqueue procrastinate jobs inside the caller's transaction.

procrastinate's own `defer` uses its own connection, so a crash between our commit and its insert
could lose a job. Calling its SQL function on our session makes "checkpoint row + its jobs" one
atomic commit: a 202 is only sent once both are durable.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

NAMESPACE = "forgetwatch"
RISK_TASK = "compute_risk"


def task_name(name: str) -> str:
    """Full name of one of our tasks, as stored in procrastinate_jobs.task_name."""
    return f"{NAMESPACE}:{name}"


def enqueue_risk(session: Session, checkpoint_id: int) -> None:
    """Ask for a (re)assessment of a checkpoint's forgetting; one waiting request per checkpoint is enough."""
    defer_job(session, task=task_name(RISK_TASK), queue="maintenance", args={"checkpoint_id": checkpoint_id},
              queueing_lock=f"risk-{checkpoint_id}")


_DEFER = text(
    """
    SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
        ROW(:queue, :task, :priority, :lock, :queueing_lock, CAST(:args AS jsonb),
            CAST(NULL AS timestamptz))::procrastinate_job_to_defer_v1
    ])) AS id
    """
)


def defer_job(
    session: Session,
    *,
    task: str,
    queue: str,
    args: dict[str, Any],
    lock: str | None = None,
    queueing_lock: str | None = None,
    priority: int = 0,
) -> int | None:
    """Insert one job in the current transaction and return its id. With a `queueing_lock`, a job
    already waiting under that lock makes this a no-op (returns None): the waiting job will do."""
    if queueing_lock is not None:
        try:
            with session.begin_nested():
                return _insert(session, task, queue, args, lock, queueing_lock, priority)
        except IntegrityError:
            return None
    return _insert(session, task, queue, args, lock, queueing_lock, priority)


def _insert(session: Session, task: str, queue: str, args: dict[str, Any], lock: str | None,
            queueing_lock: str | None, priority: int) -> int:
    return session.execute(
        _DEFER,
        {
            "queue": queue,
            "task": task,
            "priority": priority,
            "lock": lock,
            "queueing_lock": queueing_lock,
            "args": json.dumps(args),
        },
    ).scalar_one()
