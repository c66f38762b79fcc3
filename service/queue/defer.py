"""Enqueue procrastinate jobs inside the caller's transaction (the statement: `service.db.jobs`).

Every analysis is queued from here, by its task's name: the API and the CLI import this module and
never the tasks' code (`param_tasks`, `probe_tasks`, `sample_tasks`, `preview_tasks`), which loads torch."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.db.jobs import insert_job
from service.db.param_drift import set_analysis, start_analyses
from service.db.queries import mark_checkpoint

NAMESPACE = "forgetwatch"
RISK_TASK = "compute_risk"
PARAMS_KIND, RESPONSES_KIND = "params", "responses"  # checkpoint_analyses.kind of the two checkpoint analyses
PARAM_PLAN, PARAM_PART, PARAM_AGGREGATE = "plan_param_drift", "param_drift_part", "aggregate_param_drift"
SPECTRAL_BASE_TASK = "prepare_spectral_base"
PROBE_TASK, BASE_TASK = "probe_drift", "measure_base"
SAMPLE_TASK, SAMPLES_QUEUE = "sample_drift", "probes"
PREVIEW_TASK = "stage_preview"


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


def enqueue_params(session: Session, checkpoint_id: int) -> None:
    """Start (again) the parameter-drift analysis of a checkpoint."""
    set_analysis(session, checkpoint_id=checkpoint_id, kind=PARAMS_KIND, status="pending")
    _defer_param_plan(session, checkpoint_id)


def enqueue_new_checkpoint(session: Session, checkpoint_id: int, *, params: bool = True, probes: bool) -> None:
    """All work a checkpoint inserted in this transaction needs: with `params` its parameter drift,
    with `probes` (its run has probe sets) its probe analysis; their pending rows in one statement."""
    kinds = [kind for kind, wanted in ((PARAMS_KIND, params), (RESPONSES_KIND, probes)) if wanted]
    if not kinds:
        mark_checkpoint(session, checkpoint_id=checkpoint_id, status="ready")  # stored; nothing to analyse
        return
    start_analyses(session, checkpoint_id=checkpoint_id, kinds=kinds)
    if params:
        _defer_param_plan(session, checkpoint_id)
    if probes:
        _defer_probe(session, checkpoint_id)


def _defer_param_plan(session: Session, checkpoint_id: int) -> None:
    defer_job(session, task=task_name(PARAM_PLAN), queue="params", args={"checkpoint_id": checkpoint_id},
              lock=f"plan-{checkpoint_id}")


def enqueue_spectral_base(session: Session, run_id: int, *, part: int | None = None) -> None:
    """Prepare a run's base for the spectral pass: without `part`, the job that cuts it into parts;
    one waiting request per run and part."""
    args: dict[str, int] = {"run_id": run_id} if part is None else {"run_id": run_id, "part": part}
    lock = f"spectral-base-{run_id}" if part is None else f"spectral-base-{run_id}-{part}"
    defer_job(session, task=task_name(SPECTRAL_BASE_TASK), queue="params", args=args, queueing_lock=lock)


def enqueue_probes(session: Session, checkpoint_id: int) -> None:
    """Start (again) the probe analysis (response drift, measured forgetting) of a checkpoint."""
    set_analysis(session, checkpoint_id=checkpoint_id, kind=RESPONSES_KIND, status="pending")
    _defer_probe(session, checkpoint_id)


def _defer_probe(session: Session, checkpoint_id: int) -> None:
    defer_job(session, task=task_name(PROBE_TASK), queue="probes", args={"checkpoint_id": checkpoint_id},
              lock=f"probe-{checkpoint_id}")


def enqueue_base(session: Session, run_id: int) -> None:
    """Measure the run's base on its probe sets (the "step 0" row); one waiting request per run."""
    defer_job(session, task=task_name(BASE_TASK), queue="probes", args={"run_id": run_id},
              queueing_lock=f"base-{run_id}")


def enqueue_samples(session: Session, *, run_id: int, step: int, probe_set: str | None) -> None:
    """Analyse the sample batch pushed at `step` (for `probe_set`, or free samples); one waiting request per batch.
    The ingest path queues the same job inside its one statement (`service.db.ingest`)."""
    key = probe_set or ""
    defer_job(session, task=task_name(SAMPLE_TASK), queue=SAMPLES_QUEUE,
              args={"run_id": run_id, "step": step, "probe_set": key}, queueing_lock=f"samples-{run_id}-{step}-{key}")


def enqueue_preview(session: Session, *, run_id: int, stage: str) -> None:
    """Compute a stage's pre-flight forecast; one waiting request per stage."""
    defer_job(session, task=task_name(PREVIEW_TASK), queue="probes", args={"run_id": run_id, "stage": stage},
              queueing_lock=f"preview-{run_id}-{stage}")
