"""Jobs inserted into procrastinate's table inside the caller's transaction.

procrastinate's own `defer` uses its own connection, so a crash between our commit and its insert
could lose a job. Inserting on our session makes "checkpoint row + its jobs" one atomic commit: a
202 is only sent once both are durable. The statement is the one `procrastinate_defer_jobs_v1`
runs (its triggers record the event and wake the workers), with the queueing-lock conflict handled
in the same statement instead of a savepoint: one round trip per job.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

_DEFER = text(
    """
    INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
    VALUES (:queue, :task, :priority, :lock, :queueing_lock, CAST(:args AS jsonb), NULL)
    ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING
    RETURNING id
    """
)


def insert_job(
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
    return session.execute(
        _DEFER,
        {"queue": queue, "task": task, "priority": priority, "lock": lock, "queueing_lock": queueing_lock,
         "args": json.dumps(args)},
    ).scalar()
