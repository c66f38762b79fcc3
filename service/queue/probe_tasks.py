"""Response drift of a checkpoint on the run's probe sets (queue `probes`, GPU workers welcome).

The base model's side of every probe set is computed once per (base, probe set) and stored in
PostgreSQL, so any worker on any machine reuses it; each checkpoint then costs one forward pass
plus greedy decoding of the probes that have checkable answers.

Model files are opened only in the isolated child (`service.queue.isolated`, computing with
`service.queue.probe_work`): a hostile or changing checkpoint or base that crashes the loader fails
the job with a reason and the worker goes on. The task loads inputs from PostgreSQL, hands them to
the child and stores what comes back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import procrastinate

from drift.base_cache import BaseTopKCache
from drift.checkpoints import is_adapter_folder
from drift.forgetting import CheckpointEvaluation, base_scores
from drift.probes import ProbeSet
from drift.remote import RemotePath
from drift.staging import stage_folder
from service.db import param_drift as analyses
from service.db import queries
from service.db import response_drift as store
from service.db.models import Run
from service.paths import resolve_location
from service.queue import probe_work
from service.queue.defer import BASE_TASK, PROBE_TASK, RESPONSES_KIND, enqueue_risk
from service.queue.isolated import run_isolated
from service.queue.probe_work import is_model_folder
from service.queue.tasks import (
    TRANSIENT,
    TRANSIENT_ERRORS,
    WorkerServices,
    blueprint,
    fail_analysis,
    failing_analysis,
    reason_of,
    resolve_base,
    resolve_confined,
    services_of,
)
from service.settings import Settings

log = logging.getLogger("forgetwatch")
KIND, NAME, BASE_NAME = RESPONSES_KIND, PROBE_TASK, BASE_TASK


def local_folder(settings: Settings, location: Path | RemotePath) -> Path:
    """A folder transformers can load: local folders as they are, object storage folders copied into
    the bounded local cache (FORGETWATCH_CACHE_MAX_BYTES)."""
    if not isinstance(location, RemotePath):
        return location
    return stage_folder(location, settings.remote_cache_dir, max_bytes=settings.cache_max_bytes,
                        roots=settings.confinement_roots)


def loading_roots(settings: Settings) -> tuple[Path, ...]:
    """Where model files may be opened from: the allowed roots and the service's own remote cache."""
    return (*settings.allowed_roots, Path(os.path.realpath(settings.remote_cache_dir)))


@blueprint.task(name=NAME, queue="probes", pass_context=True, retry=TRANSIENT)
def probe_drift(context: procrastinate.JobContext, checkpoint_id: int) -> None:
    services = services_of(context)
    with services.sessions.begin() as session:
        row = queries.checkpoint_for_analysis(session, checkpoint_id=checkpoint_id)
        if row is None:
            return
        probe_sets = store.run_probe_sets(session, run_id=row.run_id)
        analyses.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="processing")
    checkpoint = resolve_confined(services, checkpoint_id=checkpoint_id, kind=KIND, uri=row.uri, what="checkpoint")
    base = resolve_base(services, checkpoint_id=checkpoint_id, kind=KIND, base_uri=row.base_model)
    if not probe_sets:
        fail_analysis(services, checkpoint_id=checkpoint_id, kind=KIND, message="the run has no probe sets",
                      status="skipped")
        return
    with failing_analysis(services, checkpoint_id=checkpoint_id, kind=KIND):
        outcome = _evaluate(services, probe_sets, checkpoint, base)
    if isinstance(outcome, str):
        fail_analysis(services, checkpoint_id=checkpoint_id, kind=KIND, message=outcome, status="skipped")
        return
    caches, results = outcome
    with services.sessions.begin() as session:
        for probe_set_id, cache in caches:
            store.store_base_scores(session, run_id=row.run_id, probe_set_id=probe_set_id, scores=base_scores(cache))
        for probe_set_id, evaluation in results:
            store.store_probe_result(session, checkpoint_id=checkpoint_id, probe_set_id=probe_set_id,
                                     evaluation=evaluation)
        analyses.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="ready")
        enqueue_risk(session, checkpoint_id)
    log.info("action=probe_drift_ready checkpoint=%s probe_sets=%s", checkpoint_id, len(results))



NOT_A_MODEL = ("response drift needs a transformers model folder (config.json) for the base and a model "
               "folder or a peft adapter folder (adapter_config.json) for the checkpoint")


def _evaluate(services: WorkerServices, probe_sets: list[tuple[int, ProbeSet]], checkpoint: Path | RemotePath,
              base: Path | RemotePath) -> tuple[list[tuple[int, BaseTopKCache]],
                                                list[tuple[int, CheckpointEvaluation]]] | str:
    """(base caches, results) per probe set, or the reason the checkpoint is skipped. The base's
    caches are built before the checkpoint is fetched, so a small local cache may evict the base's
    files while the checkpoint's are copied. The model files are read in the isolated child."""
    settings = services.settings
    base_key = str(base)  # the base's probe caches are stored under the URI the run gives
    base = local_folder(settings, base)
    if not is_model_folder(base):
        return NOT_A_MODEL
    caches = _base_caches(services, base_key, base, probe_sets)
    checkpoint = local_folder(settings, checkpoint)
    if not (is_model_folder(checkpoint) or is_adapter_folder(checkpoint)):
        return NOT_A_MODEL
    results = run_isolated(probe_work.evaluate, str(checkpoint), str(base), caches,
                           device=settings.probe_device, roots=loading_roots(settings))
    return [(probe_set_id, BaseTopKCache.from_bytes(data)) for probe_set_id, data in caches], results


def _base_caches(services: WorkerServices, base_key: str, base: Path,
                 probe_sets: list[tuple[int, ProbeSet]]) -> list[tuple[int, bytes]]:
    """The base's cache of each probe set: stored ones from PostgreSQL, missing ones built in the
    isolated child (the base model folder is `base`) and stored."""
    settings = services.settings
    k = settings.probe_topk
    with services.sessions.begin() as session:
        stored = {probe_set_id: store.load_base_cache(session, base_model=base_key, probe_set_id=probe_set_id, k=k,
                                                      fingerprint=probe_set.fingerprint())
                  for probe_set_id, probe_set in probe_sets}
    missing = [(probe_set_id, probe_set) for probe_set_id, probe_set in probe_sets if stored[probe_set_id] is None]
    if missing:
        built = run_isolated(probe_work.build_base_caches, str(base), missing, base_key=base_key, k=k,
                             device=settings.probe_device, roots=loading_roots(settings))
        fingerprints = {probe_set_id: probe_set.fingerprint() for probe_set_id, probe_set in missing}
        with services.sessions.begin() as session:
            for probe_set_id, data in built:
                store.store_base_cache(session, base_model=base_key, probe_set_id=probe_set_id, k=k,
                                       fingerprint=fingerprints[probe_set_id], data=data)
                stored[probe_set_id] = data
        log.info("action=probe_base_cache_built base=%s probe_sets=%s", base_key, len(built))
    return [(probe_set_id, data) for probe_set_id, data in stored.items() if data is not None]


@blueprint.task(name=BASE_NAME, queue="probes", pass_context=True, retry=TRANSIENT)
def measure_base(context: procrastinate.JobContext, run_id: int) -> None:
    """The base's accuracy, reference log-likelihood and entropy on each of the run's probe sets,
    from its cache (built here if needed, in the isolated child): no feature waits for the trainer
    to post step 0. A base that cannot be loaded is recorded with the reason."""
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        run = session.get(Run, run_id)
        base_uri = run.base_model if run is not None else None
        probe_sets = store.run_probe_sets(session, run_id=run_id) if run is not None else []
    if base_uri is None or not probe_sets:
        return
    try:
        location = resolve_location(base_uri, settings.allowed_roots, settings.remote_prefixes,
                                    hf_cache=settings.hf_cache_dir)
        base = local_folder(settings, location)
        if not is_model_folder(base):
            raise ValueError("the base is not a transformers model folder (no config.json)")
        scores = [(probe_set_id, base_scores(BaseTopKCache.from_bytes(data)))
                  for probe_set_id, data in _base_caches(services, str(location), base, probe_sets)]
    except TRANSIENT_ERRORS:
        raise
    except Exception as error:  # noqa: BLE001 - any load failure is the base's, recorded for the user
        message = f"the base cannot be loaded: {reason_of(error)}"
        with services.sessions.begin() as session:
            for probe_set_id, _ in probe_sets:
                store.store_base_scores(session, run_id=run_id, probe_set_id=probe_set_id, scores=None, error=message)
        log.warning("action=base_unmeasured run=%s reason=%s", run_id, message)
        return
    with services.sessions.begin() as session:
        for probe_set_id, measured in scores:
            store.store_base_scores(session, run_id=run_id, probe_set_id=probe_set_id, scores=measured)
    log.info("action=base_measured run=%s probe_sets=%s", run_id, len(scores))
