"""Job durations are observed by the worker that ran the job, by task and outcome, through a
procrastinate worker middleware (real procrastinate worker, its in-memory connector)."""

from __future__ import annotations

import asyncio

import procrastinate
from procrastinate.testing import InMemoryConnector
from prometheus_client import CollectorRegistry

from service.metrics import JOB_DURATION_BUCKETS, JobMetrics
from service.queue.worker import timing_middleware


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_each_finished_job_is_observed_once_with_its_outcome() -> None:
    app = procrastinate.App(connector=InMemoryConnector())

    @app.task(name="ok")
    def ok() -> None:
        return None

    @app.task(name="boom")
    def boom() -> None:
        raise ValueError("bad checkpoint")

    registry = CollectorRegistry()
    metrics = JobMetrics(registry)

    async def main() -> None:
        async with app.open_async():
            for _ in range(3):
                await ok.defer_async()
            await boom.defer_async()
            await app.run_worker_async(wait=False, install_signal_handlers=False,
                                       worker_middleware=[timing_middleware(metrics)])

    asyncio.run(main())
    name = "forgetwatch_job_duration_seconds_count"
    assert _sample(registry, name, task="ok", outcome="succeeded") == 3
    assert _sample(registry, name, task="boom", outcome="failed") == 1
    assert _sample(registry, name, task="ok", outcome="failed") is None
    # Job buckets reach an hour: a 20-minute parameter job is not lumped into +Inf.
    assert max(JOB_DURATION_BUCKETS) >= 3600
    assert _sample(registry, "forgetwatch_job_duration_seconds_bucket", task="ok", outcome="succeeded",
                   le="0.1") == 3
