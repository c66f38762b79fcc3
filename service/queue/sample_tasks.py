"""Embedding shift and collapse signals of a pushed sample batch (queue `probes`).

Reference: the base model's greedy responses to the same prompts, generated in the isolated child
(`service.queue.probe_work.sample_signals`, which keeps them in memory per child): a base whose
files crash the loader fails the job, not the worker. Trainers should push greedy samples for a
like-for-like comparison; the Trainer callback does.
"""

from __future__ import annotations

import logging

import procrastinate
from sqlalchemy.orm import Session

from drift.confined import CheckpointError
from service.db import queries
from service.db import response_drift as store
from service.errors import ForgetwatchError
from service.paths import resolve_location
from service.queue.defer import defer_job, enqueue_risk, task_name
from service.queue.isolated import run_isolated
from service.queue.probe_tasks import loading_roots, local_folder
from service.queue.probe_work import is_model_folder, sample_signals
from service.queue.tasks import TRANSIENT, blueprint, reason_of, services_of

log = logging.getLogger("forgetwatch")
NAME = "sample_drift"


def enqueue(session: Session, *, run_id: int, step: int, probe_set: str | None) -> None:
    key = probe_set or ""
    defer_job(session, task=task_name(NAME), queue="probes", args={"run_id": run_id, "step": step, "probe_set": key},
              queueing_lock=f"samples-{run_id}-{step}-{key}")


@blueprint.task(name=NAME, queue="probes", pass_context=True, retry=TRANSIENT)
def sample_drift(context: procrastinate.JobContext, run_id: int, step: int, probe_set: str) -> None:
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        base_uri = queries.run_base_model(session, run_id=run_id)
        rows = queries.sample_batch(session, run_id=run_id, step=step, probe_set=probe_set)
    if base_uri is None or not rows:
        return
    try:  # a base in object storage is copied into the bounded local cache, as for probe jobs
        base = local_folder(settings, resolve_location(base_uri, settings.allowed_roots, settings.remote_prefixes,
                                                       hf_cache=settings.hf_cache_dir))
    except (ForgetwatchError, CheckpointError) as error:
        log.warning("action=sample_base_unavailable run=%s reason=%s", run_id, reason_of(error))
        base = None
    logprobs = [r.logprobs for r in rows] if all(r.logprobs for r in rows) else None
    values, data = run_isolated(
        sample_signals, str(base) if base is not None and is_model_folder(base) else None,
        [r.prompt for r in rows], [r.response for r in rows], logprobs,
        device=settings.probe_device, roots=loading_roots(settings))
    with services.sessions.begin() as session:
        store.store_sample_result(session, run_id=run_id, step=step, probe_set=probe_set, values=values, data=data)
        checkpoint = queries.find_checkpoint(session, run_id=run_id, step=step)
        if checkpoint is not None:
            enqueue_risk(session, checkpoint.id)
    log.info("action=sample_drift_done run=%s step=%s samples=%s", run_id, step, len(rows))
