"""Enqueue procrastinate jobs inside the caller's transaction (the statement: `service.db.jobs`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.db.jobs import insert_job

NAMESPACE = "forgetwatch"
RISK_TASK = "compute_risk"


def task_name(name: str) -> str:
    """Full name of one of our tasks, as stored in procrastinate_jobs.task_name."""
    return f"{NAMESPACE}:{name}"


def enqueue_risk(session: Session, checkpoint_id: int) -> None:
    """Ask for a (re)assessment of a checkpoint's forgetting; one waiting request per checkpoint is enough."""
    defer_job(session, task=task_name(RISK_TASK), queue="maintenance", args={"checkpoint_id": checkpoint_id},
              queueing_lock=f"risk-{checkpoint_id}")


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
    return insert_job(session, task=task, queue=queue, args=args, lock=lock, queueing_lock=queueing_lock,
                      priority=priority)
