"""Jobs go into procrastinate's table inside the caller's transaction, one statement each: a job
already waiting under the same queueing lock makes a second one a no-op, and procrastinate's own
triggers still record the deferral (the queue-age metric reads it)."""

from __future__ import annotations

from sqlalchemy import Engine, text

from service.db.session import make_sessionmaker
from service.queue.defer import defer_job, task_name


def test_a_waiting_job_under_the_same_queueing_lock_makes_the_next_a_no_op(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        first = defer_job(session, task=task_name("sample_drift"), queue="probes", args={"run_id": 1},
                          queueing_lock="samples-1-1-")
        again = defer_job(session, task=task_name("sample_drift"), queue="probes", args={"run_id": 1},
                          queueing_lock="samples-1-1-")
        other = defer_job(session, task=task_name("sample_drift"), queue="probes", args={"run_id": 2},
                          queueing_lock="samples-2-1-")
    assert isinstance(first, int) and again is None and isinstance(other, int) and other != first
    with sessions.begin() as session:
        session.execute(text("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = :id"), {"id": first})
    with sessions.begin() as session:  # the first one runs: a new request under the lock is queued
        later = defer_job(session, task=task_name("sample_drift"), queue="probes", args={"run_id": 1},
                          queueing_lock="samples-1-1-")
    assert isinstance(later, int)
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT id, queue_name, task_name, args->>'run_id' FROM procrastinate_jobs "
                                 "ORDER BY id")).all()
        deferred = conn.execute(text("SELECT job_id FROM procrastinate_events WHERE type = 'deferred' "
                                     "ORDER BY job_id")).scalars().all()
    assert [(j[0], j[1], j[2], j[3]) for j in jobs] == [
        (first, "probes", "forgetwatch:sample_drift", "1"), (other, "probes", "forgetwatch:sample_drift", "2"),
        (later, "probes", "forgetwatch:sample_drift", "1")]
    assert deferred == [first, other, later]


def test_a_rolled_back_transaction_leaves_no_job(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        defer_job(session, task=task_name("plan_param_drift"), queue="params", args={"checkpoint_id": 7})
        session.rollback()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar_one() == 0
