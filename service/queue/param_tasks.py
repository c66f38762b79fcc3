"""Parameter drift of a checkpoint, scaled out: plan -> one part per shard (any worker) -> aggregate.

- plan: checks the files, picks the previous checkpoints (the two latest lower steps registered
  at planning time), splits the tensors into parts and enqueues one job per part.
- part: computes the rows of its tensors and stores them (replacing any earlier run of the part);
  the part that finds all others done enqueues the aggregate.
- aggregate: pools all rows into block/module/global summaries and marks the analysis ready.

The base's half of the spectral pass (its top-k SVD, most of the pass's cost) is computed once per
base file when a run is registered (``prepare_spectral_base``), while the trainer is still on its
first steps, in parts cut like a checkpoint's, so the first checkpoint's parts find it cached and pay
only their own half.
"""

from __future__ import annotations

import logging

import procrastinate

from drift.checkpoints import list_tensors
from drift.params import aggregate, prepare_spectral_base, shard_groups, spectral_base_groups, tensor_rows
from drift.spectral import SpectralOptions
from service.db import param_drift as store
from service.db import queries
from service.paths import resolve_location
from service.queue.defer import (
    PARAM_AGGREGATE,
    PARAM_PART,
    PARAM_PLAN,
    PARAMS_KIND,
    SPECTRAL_BASE_TASK,
    defer_job,
    enqueue_risk,
    enqueue_spectral_base,
    task_name,
)
from service.queue.isolated import run_isolated
from service.queue.tasks import (
    TRANSIENT,
    TRANSIENT_ERRORS,
    blueprint,
    failing_analysis,
    reason_of,
    resolve_base,
    resolve_confined,
    services_of,
)
from service.settings import Settings

log = logging.getLogger("forgetwatch")
KIND, PLAN, PART, AGGREGATE, PREPARE = PARAMS_KIND, PARAM_PLAN, PARAM_PART, PARAM_AGGREGATE, SPECTRAL_BASE_TASK


def spectral_options(settings: Settings) -> SpectralOptions:
    """The options every spectral computation of this service uses (they key the base's cache)."""
    return SpectralOptions(k=settings.spectral_k, max_elements=settings.spectral_max_elements)


def split_by_size(groups: list[list[str]], sizes: dict[str, int], max_elements: int) -> list[list[str]]:
    """Cut each shard's tensor list into parts of at most `max_elements` (a part has >= 1 tensor)."""
    parts: list[list[str]] = []
    for group in groups:
        current: list[str] = []
        total = 0
        for name in group:
            size = sizes.get(name, 0)
            if current and total + size > max_elements:
                parts.append(current)
                current, total = [], 0
            current.append(name)
            total += size
        if current:
            parts.append(current)
    return parts


@blueprint.task(name=PLAN, queue="params", pass_context=True, retry=TRANSIENT)
def plan_param_drift(context: procrastinate.JobContext, checkpoint_id: int) -> None:
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        row = queries.checkpoint_for_analysis(session, checkpoint_id=checkpoint_id)
        if row is None:
            return
        previous = queries.previous_checkpoint_uris(session, run_id=row.run_id, step=row.step)
        store.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="processing")
    with failing_analysis(services, checkpoint_id=checkpoint_id, kind=KIND):
        base = resolve_base(services, checkpoint_id=checkpoint_id, kind=KIND, base_uri=row.base_model)
        checkpoint = resolve_confined(services, checkpoint_id=checkpoint_id, kind=KIND, uri=row.uri,
                                      what="checkpoint")
        roots = settings.confinement_roots
        sizes = {t.name: t.numel for t in list_tensors(checkpoint, roots=roots)}
        parts = split_by_size(shard_groups(base, checkpoint, roots=roots), sizes, settings.param_part_elements)
    # The base is step "zero" of the history: the first checkpoint's update is measured against it.
    history = [*previous, str(base)][:2]
    details = {"base": str(base), "checkpoint": str(checkpoint), "previous": history, "parts": len(parts)}
    with services.sessions.begin() as session:
        store.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="processing", details=details)
        store.replace_parts(session, checkpoint_id=checkpoint_id, groups=parts)
        for part in range(len(parts)):
            defer_job(session, task=task_name(PART), queue="params",
                      args={"checkpoint_id": checkpoint_id, "part": part})
    log.info("action=param_drift_planned checkpoint=%s parts=%s", checkpoint_id, len(parts))


@blueprint.task(name=PART, queue="params", pass_context=True, retry=TRANSIENT)
def param_drift_part(context: procrastinate.JobContext, checkpoint_id: int, part: int) -> None:
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        names = store.part_names(session, checkpoint_id=checkpoint_id, part=part)
        details = store.analysis_details(session, checkpoint_id=checkpoint_id, kind=KIND)
    if names is None:
        return  # re-planned or deleted since
    previous = details["previous"] + [None, None]
    with failing_analysis(services, checkpoint_id=checkpoint_id, kind=KIND):
        rows = run_isolated(  # a file truncated while mapped kills the child, not the worker
            tensor_rows, details["base"], details["checkpoint"], names=names, previous=previous[0],
            before_previous=previous[1],
            spectral=settings.spectral, spectral_options=spectral_options(settings),
            cache_dir=settings.cache_dir / "spectral", roots=settings.confinement_roots,
        )
    with services.sessions.begin() as session:
        remaining = store.store_part(session, checkpoint_id=checkpoint_id, part=part, rows=rows)
        if remaining == 0:
            defer_job(session, task=task_name(AGGREGATE), queue="params", args={"checkpoint_id": checkpoint_id},
                      queueing_lock=f"aggregate-params-{checkpoint_id}")
    log.info("action=param_drift_part_done checkpoint=%s part=%s tensors=%s", checkpoint_id, part, len(rows))


@blueprint.task(name=AGGREGATE, queue="params", pass_context=True, retry=TRANSIENT)
def aggregate_param_drift(context: procrastinate.JobContext, checkpoint_id: int) -> None:
    services = services_of(context)
    with failing_analysis(services, checkpoint_id=checkpoint_id, kind=KIND), services.sessions.begin() as session:
        rows = store.load_rows(session, checkpoint_id=checkpoint_id)
        summary = aggregate(rows)
        store.replace_summaries(session, checkpoint_id=checkpoint_id, summary=summary)
        store.set_analysis(session, checkpoint_id=checkpoint_id, kind=KIND, status="ready")
        enqueue_risk(session, checkpoint_id)
    log.info("action=param_drift_ready checkpoint=%s tensors=%s", checkpoint_id, len(rows))


def spectral_base_parts(base, settings: Settings) -> list[list[str]]:
    """The base's matrices in parts cut like a checkpoint's (per file, at most `param_part_elements`),
    so the preparation runs on as many workers as the first checkpoint's parameter drift will."""
    groups = spectral_base_groups(base, options=spectral_options(settings), roots=settings.confinement_roots)
    sizes = {info.name: info.numel for group in groups for info in group}
    return split_by_size([[info.name for info in group] for group in groups], sizes, settings.param_part_elements)


@blueprint.task(name=PREPARE, queue="params", pass_context=True, retry=TRANSIENT)
def prepare_spectral_base_task(context: procrastinate.JobContext, run_id: int, part: int | None = None) -> None:
    """The base's spectral results for every matrix, into the worker's cache, before any checkpoint
    needs them. The job queued with the run (no `part`) cuts the base into parts, queues the others
    and computes the first. A base that cannot be read is only logged: each checkpoint's analysis
    reports it."""
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        base_uri = queries.run_base_model(session, run_id=run_id)
    if base_uri is None or not settings.spectral:
        return
    try:
        base = resolve_location(base_uri, settings.allowed_roots, settings.remote_prefixes,
                                hf_cache=settings.hf_cache_dir)
        parts = spectral_base_parts(base, settings)
        if part is None:
            with services.sessions.begin() as session:
                for later in range(1, len(parts)):
                    enqueue_spectral_base(session, run_id, part=later)
            part = 0
        if part >= len(parts):
            return  # no matrix to prepare, or the base changed since the parts were cut
        computed = run_isolated(prepare_spectral_base, str(base), options=spectral_options(settings),
                                cache_dir=settings.cache_dir / "spectral", names=parts[part],
                                roots=settings.confinement_roots)
    except TRANSIENT_ERRORS:
        raise
    except Exception as error:  # noqa: BLE001 - the checkpoints' analyses report the base's errors
        log.warning("action=spectral_base_unprepared run=%s part=%s reason=%s", run_id, part, reason_of(error))
        return
    log.info("action=spectral_base_prepared run=%s part=%s/%s matrices=%s", run_id, part, len(parts), computed)
