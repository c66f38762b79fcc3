"""Jobs in procrastinate's table: inserted inside the caller's transaction, and listed.

procrastinate's own `defer` uses its own connection, so a crash between our commit and its insert
could lose a job. Inserting on our session makes "checkpoint row + its jobs" one atomic commit: a
202 is only sent once both are durable. The statement is the one `procrastinate_defer_jobs_v1`
runs (its triggers record the event and wake the workers), with the queueing-lock conflict handled
in the same statement instead of a savepoint: one round trip per job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


def list_jobs(session: Session, *, namespace: str, analysis_of: Mapping[str, str], run_id: int | None = None,
              status: str | None = None, task: str | None = None, after: int | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Jobs of our tasks (`namespace:*`) in id order after the id `after`, at most `limit`: those of
    one run (a job for one of its checkpoints, or for the run itself), in one `status`, of one `task`
    (full name). Each row names its run and step where it has them, and `error`: the reason the
    checkpoint's analysis of the job's kind (`analysis_of`: task name -> analysis kind) failed with."""
    where = ["j.task_name LIKE :ns", "j.id > :after"]
    params: dict[str, Any] = {"ns": f"{namespace}:%", "after": -1 if after is None else after, "limit": limit,
                              "tasks": list(analysis_of), "kinds": list(analysis_of.values())}
    if run_id is not None:
        where.append("(c.run_id = :run OR (j.args ? 'run_id' AND j.args->>'run_id' = CAST(:run AS text)))")
        params["run"] = run_id
    if status is not None:
        where.append("j.status::text = :status")
        params["status"] = status
    if task is not None:
        where.append("j.task_name = :task")
        params["task"] = task
    rows = session.execute(text(
        "SELECT j.id, j.task_name, j.queue_name, j.status::text AS status, j.attempts, j.args, "
        "r.name AS run, c.step, a.error FROM procrastinate_jobs j "
        "LEFT JOIN checkpoints c ON j.args ? 'checkpoint_id' AND c.id = CAST(j.args->>'checkpoint_id' AS bigint) "
        "LEFT JOIN runs r ON r.id = COALESCE(c.run_id, CASE WHEN jsonb_typeof(j.args->'run_id') = 'number' "
        "THEN CAST(j.args->>'run_id' AS bigint) END) "
        "LEFT JOIN unnest(CAST(:tasks AS text[]), CAST(:kinds AS text[])) AS k(task, kind) ON k.task = j.task_name "
        "LEFT JOIN checkpoint_analyses a ON a.checkpoint_id = c.id AND a.kind = k.kind "
        f"WHERE {' AND '.join(where)} ORDER BY j.id LIMIT :limit"), params).mappings()
    return [dict(r) for r in rows]
