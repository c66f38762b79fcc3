"""Running a worker: procrastinate's worker, recovery of jobs whose worker died, and the sweep of
analyses whose jobs all ended without a result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import procrastinate
from procrastinate import exceptions as pexc

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
) -> None:
    """Run until cancelled (or SIGTERM/SIGINT when signal handlers are installed)."""
    settings = services.settings
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
            )
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
