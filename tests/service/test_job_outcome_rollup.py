"""/metrics counts finished jobs from a rollup that a trigger keeps as procrastinate finishes them (its
own SQL functions, run here as its worker runs them), not by aggregating the job history per scrape."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.db.session import make_sessionmaker
from service.queue.defer import defer_job

TASK = "forgetwatch:compute_risk"


def _finished(client: TestClient, outcome: str) -> float:
    """The exported count of TASK's jobs with this outcome (0 while none ever finished)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("forgetwatch_jobs_finished_total{") and f'task="{TASK}"' in line \
                and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_finished_jobs_are_counted_as_they_finish_and_stay_counted_when_cleaned_out(client: TestClient, engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    assert _finished(client, "succeeded") == 0
    with sessions.begin() as session:
        ids = [defer_job(session, task=TASK, queue="maintenance", args={"checkpoint_id": i}) for i in range(3)]
    with sessions.begin() as session:
        for job_id, status in zip(ids, ("succeeded", "failed", "succeeded"), strict=True):
            fetched = session.execute(text("SELECT id FROM procrastinate_fetch_job_v2(ARRAY['maintenance'], NULL)"))
            assert fetched.scalar() is not None
            session.execute(text("SELECT procrastinate_finish_job_v1(:j, CAST(:s AS procrastinate_job_status), false)"),
                            {"j": job_id, "s": status})
    assert (_finished(client, "succeeded"), _finished(client, "failed")) == (2, 1)
    with sessions.begin() as session:  # old finished jobs cleaned out of the queue's table
        session.execute(text("DELETE FROM procrastinate_jobs WHERE status IN ('succeeded', 'failed')"))
    assert (_finished(client, "succeeded"), _finished(client, "failed")) == (2, 1)  # a counter only grows
