"""Running a worker: procrastinate's worker, recovery of jobs whose worker died, and the sweep of
analyses whose jobs all ended without a result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc

from service.metrics import JobMetrics
from service.queue.isolated import share_cores
from service.queue.tasks import WorkerServices, forget_expired_idempotency_keys, sweep_orphaned_analyses

log = logging.getLogger("forgetwatch")


async def recover_stalled_jobs(app: procrastinate.App, *, stalled_after_seconds: float) -> int:
    """Put back to `todo` the running jobs of workers that stopped sending heartbeats."""
    await app.job_manager.prune_stalled_workers(stalled_after_seconds)
    stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after_seconds)
    recovered = 0
    for job in stalled:
        try:
            await app.job_manager.retry_job(job)
            recovered += 1
            log.warning("action=stalled_job_retried job=%s task=%s", job.id, job.task_name)
        except pexc.ConnectorException:
            pass  # another worker retried it first
    return recovered


def timing_middleware(metrics: JobMetrics) -> Callable[..., Awaitable[Any]]:
    """A procrastinate worker middleware observing each job's run time, by task and outcome."""

    async def timed(call_next: Callable[[], Awaitable[Any]], context: procrastinate.JobContext, _worker: Any) -> Any:
        start = time.perf_counter()
        outcome = "failed"
        try:
            result = await call_next()
            outcome = "succeeded"
            return result
        except (pexc.JobAborted, asyncio.CancelledError):
            outcome = "aborted"
            raise
        finally:
            task = context.job.task_name if context.job else "unknown"
            metrics.duration.labels(task, outcome).observe(time.perf_counter() - start)

    return timed


async def _recovery_loop(app: procrastinate.App, services: WorkerServices, *, stalled_after_seconds: float) -> None:
    while True:
        try:
            await recover_stalled_jobs(app, stalled_after_seconds=stalled_after_seconds)
            # After recovery: a dead worker's jobs are live again, so only true orphans are swept.
            await asyncio.to_thread(sweep_orphaned_analyses, services)
            await asyncio.to_thread(forget_expired_idempotency_keys, services)
        except Exception as error:  # noqa: BLE001 - keep the loop alive through DB outages
            log.warning("action=stalled_job_recovery_failed error=%s", error)
        await asyncio.sleep(max(1.0, stalled_after_seconds / 3))


async def run_worker(
    app: procrastinate.App,
    services: WorkerServices,
    *,
    queues: Iterable[str] | None = None,
    concurrency: int | None = None,
    install_signal_handlers: bool = True,
    job_metrics: JobMetrics | None = None,
) -> None:
    """Run until cancelled (or SIGTERM/SIGINT when signal handlers are installed); with
    `job_metrics`, every job's run time is observed there."""
    settings = services.settings
    threads = share_cores(concurrency or settings.worker_concurrency)
    log.info("action=worker_threads per_job=%s", threads)
    async with app.open_async():
        recovery = asyncio.create_task(
            _recovery_loop(app, services, stalled_after_seconds=settings.stalled_after_seconds)
        )
        try:
            await app.run_worker_async(
                queues=list(queues) if queues else None,
                concurrency=concurrency or settings.worker_concurrency,
                additional_context={"services": services},
                update_heartbeat_interval=settings.worker_heartbeat_seconds,
                stalled_worker_timeout=settings.stalled_after_seconds,
                install_signal_handlers=install_signal_handlers,
                shutdown_graceful_timeout=30,
                worker_middleware=[timing_middleware(job_metrics)] if job_metrics is not None else [],
            )
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
