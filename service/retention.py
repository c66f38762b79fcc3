"""Each stage of a run against its start: the change on its retention sets since it began.

A stage's retention sets are the probe sets of every earlier stage and every `ood` set it does not
train for. Its start is the previous stage's row of the transfer matrix (its last analysed
checkpoint; the base for the first stage). Per-item scores as in `service.transfer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from drift.paired import paired_bootstrap_change
from drift.transfer import relative_drop, weighted_scores
from service.db import stages as db
from service.errors import NotFound
from service.transfer import CONFIDENCE, METRICS, N_BOOTSTRAP, StageSpan, items_for, spans, stages_of


def retention_sets(stages: Sequence[db.Stage], domains: dict[str, str], position: int) -> list[str]:
    """Probe sets of every stage before `position` and every ood set that stage does not train for."""
    own = set(stages[position - 1].probe_sets)
    earlier = [p for stage in stages[: position - 1] for p in stage.probe_sets]
    ood = sorted(p for p, domain in domains.items() if domain == "ood" and p not in own and p not in earlier)
    return earlier + ood


def retention_report(
    session: Session,
    *,
    run_id: int,
    stage_name: str | None = None,
    intervals: bool = True,
    step: int | None = None,
) -> dict[str, Any]:
    """Each analysed checkpoint of a stage (default: the latest stage with one; only the one at `step`
    when given) against the stage's start, on every retention set: the score then and now, the change
    with its paired-bootstrap interval over items, and the relative drop (positive = worse)."""
    stages = stages_of(session, run_id)
    analysed = db.analysed_checkpoints(session, run_id=run_id)
    domains = db.probe_set_domains(session, run_id=run_id)
    rows = spans(stages, analysed)
    if stage_name is None:
        started = [r for r in rows if r.checkpoint_id is not None]
        span = started[-1] if started else rows[0]
    else:
        named = [r for r in rows if r.stage.name == stage_name]
        if not named:
            raise NotFound(
                f"the run has no stage {stage_name!r}; list its stages with GET /v1/runs/{{run}}/stages"
            )
        span = named[0]
    position = span.stage.position
    previous = rows[position - 2] if position > 1 else None
    inside = [
        (cid, at)
        for cid, at, _ in analysed
        if at >= span.stage.start_step
        and (span.end_step is None or at < span.end_step)
        and step in (None, at)
    ]
    base_source = {p: cid for cid, _, names in analysed for p in names}
    sets = retention_sets(stages, domains, position)
    ids = {cid for cid, _ in inside} | set(base_source.values())
    if previous is not None and previous.checkpoint_id is not None:
        ids.add(previous.checkpoint_id)
    stored = db.item_scores(session, checkpoint_ids=sorted(ids))
    reference = (
        {"row": 0, "stage": None, "checkpoint_step": None}
        if previous is None
        else {"row": position - 1, "stage": previous.stage.name, "checkpoint_step": previous.checkpoint_step}
    )
    checkpoints = []
    for cid, at in inside:
        entries = []
        for name in sets:
            for metric in METRICS:
                entry = _retention_entry(name, metric, previous, cid, stored, base_source, intervals)
                if entry is not None:
                    entries.append(entry)
        checkpoints.append({"step": at, "probe_sets": entries})
    return {
        "stage": span.stage.name,
        "position": position,
        "start_step": span.stage.start_step,
        "end_step": span.end_step,
        "reference": reference,
        "retention_sets": sets,
        "checkpoints": checkpoints,
    }


def _retention_entry(
    name: str,
    metric: str,
    previous: StageSpan | None,
    cid: int,
    stored: dict[tuple[int, str], list[dict[str, Any]]],
    base_source: dict[str, int],
    intervals: bool,
) -> dict[str, Any] | None:
    now = items_for(stored.get((cid, name)), metric)
    base = items_for(stored.get((base_source.get(name, -1), name)), metric)
    if base is None:
        return None  # the probe set does not measure this metric (or was never analysed)
    entry: dict[str, Any] = {
        "probe_set": name,
        "metric": metric,
        "start": None,
        "current": None,
        "change": None,
        "ci_low": None,
        "ci_high": None,
        "drop_ratio": None,
        "reason": None,
    }
    if previous is None:
        start = base.base if now is not None and now.positions == base.positions else None
    elif previous.checkpoint_id is None:
        entry["reason"] = f"stage {previous.stage.name!r} before it has no analysed checkpoint to start from"
        return entry
    else:
        before = items_for(stored.get((previous.checkpoint_id, name)), metric)
        start = (
            before.current
            if before is not None and now is not None and before.positions == now.positions
            else None
        )
    if now is None or start is None:
        entry["reason"] = (
            f"probe set {name!r} is not measured both here and at the stage's start (attached later, "
            "or analysed before per-item scores were kept)"
        )
        return entry
    first, last = float(weighted_scores(start, now.weights)), float(weighted_scores(now.current, now.weights))
    entry.update(start=first, current=last, change=last - first, drop_ratio=relative_drop(first, last))
    if intervals:
        change = paired_bootstrap_change(
            start,
            now.current,
            weights=now.weights,
            n_bootstrap=N_BOOTSTRAP,
            confidence=CONFIDENCE,
            random_state=0,
        )
        entry.update(ci_low=change.ci_low, ci_high=change.ci_high)
    return entry


def since_stage_start(session: Session, *, run_id: int, step: int) -> dict[str, Any] | None:
    """The checkpoint at `step` against the start of its stage, on the stage's retention sets; None
    for a run without stages or a step before its first stage."""
    started = [s for s in db.run_stages(session, run_id=run_id) if s.start_step <= step]
    if not started:
        return None
    report = retention_report(session, run_id=run_id, stage_name=started[-1].name, step=step)
    found = report["checkpoints"]
    return {
        "stage": report["stage"],
        "reference": report["reference"],
        "probe_sets": found[0]["probe_sets"] if found else [],
    }


def retention_drops(session: Session, *, run_id: int) -> list[tuple[str, str, float]]:
    """(stage, probe set, relative drop) on each retention set at the latest checkpoint of the run's
    current stage: of accuracy when it has a nonzero start, else of reference log-likelihood (the
    order `forgetting_ratio` uses against the base). Empty for a run without stages."""
    if not db.run_stages(session, run_id=run_id):
        return []
    report = retention_report(session, run_id=run_id, intervals=False)
    if not report["checkpoints"]:
        return []
    out, seen = [], set()
    for entry in report["checkpoints"][-1]["probe_sets"]:  # accuracy before loglik per probe set
        if entry["drop_ratio"] is not None and entry["probe_set"] not in seen:
            seen.add(entry["probe_set"])
            out.append((report["stage"], entry["probe_set"], float(entry["drop_ratio"])))
    return out
