"""Embedding shift and collapse signals of a pushed sample batch (queue `probes`).

Reference: the base model's greedy responses to the same prompts, generated in the isolated child
(`service.queue.probe_work.sample_signals`, which keeps them in memory per child): a base whose
files crash the loader fails the job, not the worker. Trainers should push greedy samples for a
like-for-like comparison; the Trainer callback does.

Each batch's paired embeddings are kept, and the run's sequential shift e-process
(`drift.sequential`) is recomputed over all of its batches, by step then probe set, under a per-run
lock: a batch that arrives late or is pushed again takes its place in step order and the e-values
after it are rewritten. Batches embedded in another dimension (the embedder changed) are left out.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import procrastinate
from sqlalchemy.orm import Session

from drift.confined import CheckpointError
from drift.sequential import MAX_PAIRS_PER_BATCH, sequential_shift_test
from service.db import queries
from service.db import response_drift as store
from service.db import sample_evidence as evidence
from service.errors import ForgetwatchError
from service.paths import resolve_location
from service.queue.defer import SAMPLE_TASK, enqueue_risk
from service.queue.isolated import run_isolated
from service.queue.probe_tasks import loading_roots, local_folder
from service.queue.probe_work import is_model_folder, sample_signals
from service.queue.tasks import TRANSIENT, blueprint, reason_of, services_of

log = logging.getLogger("forgetwatch")
NAME = SAMPLE_TASK


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
    values, data, pairs = run_isolated(
        sample_signals, str(base) if base is not None and is_model_folder(base) else None,
        [r.prompt for r in rows], [r.response for r in rows], logprobs,
        device=settings.probe_device, roots=loading_roots(settings))
    with services.sessions.begin() as session:
        if pairs is not None:
            evidence.lock_run_samples(session, run_id=run_id)
        store.store_sample_result(session, run_id=run_id, step=step, probe_set=probe_set, values=values, data=data)
        if pairs is not None:
            update_shift_evalues(session, run_id=run_id, step=step, probe_set=probe_set, pairs=pairs)
        checkpoint = queries.find_checkpoint(session, run_id=run_id, step=step)
        if checkpoint is not None:
            enqueue_risk(session, checkpoint.id)
    log.info("action=sample_drift_done run=%s step=%s samples=%s", run_id, step, len(rows))


def update_shift_evalues(session: Session, *, run_id: int, step: int, probe_set: str,
                         pairs: tuple[np.ndarray, np.ndarray]) -> None:
    """Store this batch's embeddings (the pairs the e-process bets on: at most `MAX_PAIRS_PER_BATCH`),
    then recompute and store the run's e-process after every batch."""
    reference, current = (side[:MAX_PAIRS_PER_BATCH] for side in pairs)
    evidence.store_batch_embeddings(session, run_id=run_id, step=step, probe_set=probe_set, reference=reference,
                                    current=current)
    batches = [b for b in evidence.run_batch_embeddings(session, run_id=run_id)
               if b.reference.shape[1] == reference.shape[1]]
    result = sequential_shift_test([(b.reference, b.current) for b in batches])
    evidence.store_shift_evalues(session, run_id=run_id, batches=batches, evalues=result.evalues,
                                 running_max=list(itertools.accumulate(result.evalues, max)))
