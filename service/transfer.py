"""A staged run's transfer matrix, from the probe results already stored.

Stage i covers the steps from its `start_step` up to (not including) the next stage's. Its row in
the matrix is its last analysed checkpoint: the end of the stage once the next one has started, the
latest checkpoint while it runs. Row 0 is the base (its per-item side is stored with every probe
result). Accuracy and reference log-likelihood are separate matrices: each probe set appears in those
it measures (answers, reference completions). Each stage against its start: `service.retention`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from drift.transfer import Interval, transfer_matrix
from service.db import stages as db
from service.errors import NotFound

METRICS = ("accuracy", "loglik")
N_BOOTSTRAP = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class StageSpan:
    """A stage with its steps [start_step, end_step) (end None: open) and its row's checkpoint."""

    stage: db.Stage
    end_step: int | None
    checkpoint_id: int | None
    checkpoint_step: int | None


@dataclass(frozen=True)
class Items:
    """One probe set's scored items on one checkpoint for one metric: positions, the checkpoint's
    and the base's per-item scores and their weights (tokens for log-likelihood, 1 for accuracy)."""

    positions: tuple[int, ...]
    current: np.ndarray
    base: np.ndarray
    weights: np.ndarray


def items_for(rows: Sequence[dict[str, Any]] | None, metric: str) -> Items | None:
    """The items of one stored probe result that measure `metric`; None when it has none (a probe
    set without answers, or one stored before per-item scores were kept)."""
    if not rows:
        return None
    if metric == "accuracy":
        kept = [r for r in rows if r["base_correct"] is not None and r["correct"] is not None]
        values = [(float(r["correct"]), float(r["base_correct"]), 1.0) for r in kept]
    else:
        kept = [r for r in rows if r["from_reference"] and r["n_tokens"] and r["mean_logprob"] is not None]
        values = [(r["mean_logprob"], r["base_mean_logprob"], float(r["n_tokens"])) for r in kept]
    if not kept:
        return None
    current, base, weights = (np.array(column, dtype=np.float64) for column in zip(*values, strict=True))
    return Items(tuple(r["position"] for r in kept), current, base, weights)


def spans(stages: Sequence[db.Stage], analysed: Sequence[tuple[int, int, frozenset[str]]]) -> list[StageSpan]:
    out = []
    for i, stage in enumerate(stages):
        end = stages[i + 1].start_step if i + 1 < len(stages) else None
        inside = [
            (cid, step)
            for cid, step, _ in analysed
            if step >= stage.start_step and (end is None or step < end)
        ]
        cid, step = inside[-1] if inside else (None, None)
        out.append(StageSpan(stage, end, cid, step))
    return out


def stages_of(session: Session, run_id: int) -> list[db.Stage]:
    stages = db.run_stages(session, run_id=run_id)
    if not stages:
        raise NotFound(
            "the run has no stages; declare them in training order with POST /v1/runs/{run}/stages"
        )
    return stages


def _columns(stages: Sequence[db.Stage], domains: dict[str, str]) -> list[tuple[str, int]]:
    """(probe set, stage position) in stage order, then the run's other probe sets with stage 0."""
    trained = [(p, stage.position) for stage in stages for p in stage.probe_sets]
    named = {p for p, _ in trained}
    return trained + [(p, 0) for p in sorted(domains) if p not in named]


def _interval(found: Interval | None) -> dict[str, Any] | None:
    return (
        None
        if found is None
        else {
            "value": found.value,
            "ci_low": found.ci_low,
            "ci_high": found.ci_high,
            "n_stages": found.n_stages,
            "confidence": found.confidence,
        }
    )


def transfer_report(session: Session, *, run_id: int, n_bootstrap: int = N_BOOTSTRAP) -> dict[str, Any]:
    """The matrix per metric with a reason for every empty cell, and BWT / FWT with intervals."""
    stages = stages_of(session, run_id)
    analysed = db.analysed_checkpoints(session, run_id=run_id)
    domains = db.probe_set_domains(session, run_id=run_id)
    rows = spans(stages, analysed)
    columns = _columns(stages, domains)
    # the base's per-item side of a probe set: from its latest stored result (identical on every one)
    base_source = {p: cid for cid, _, names in analysed for p in names}
    needed = {r.checkpoint_id for r in rows if r.checkpoint_id is not None} | set(base_source.values())
    stored = db.item_scores(session, checkpoint_ids=sorted(needed))
    measured = {cid: names for cid, _, names in analysed}
    out_rows = [
        {
            "row": 0,
            "stage": None,
            "start_step": None,
            "end_step": None,
            "checkpoint_step": None,
            "complete": True,
        }
    ]
    out_rows += [
        {
            "row": i + 1,
            "stage": r.stage.name,
            "start_step": r.stage.start_step,
            "end_step": r.end_step,
            "checkpoint_step": r.checkpoint_step,
            "complete": r.end_step is not None and any(step >= r.end_step for _, step, _ in analysed),
        }
        for i, r in enumerate(rows)
    ]
    measures = db.probe_set_metrics(session, run_id=run_id)
    metrics = {}
    for metric in METRICS:
        names, scores, weights, stage_of, cells = [], [], [], [], []
        for name, position in columns:
            if metric not in measures.get(name, ()):
                continue
            base = items_for(stored.get((base_source.get(name, -1), name)), metric)
            if base is None:
                reason = (
                    f"no checkpoint has been analysed on probe set {name!r} yet"
                    if name not in base_source
                    else f"probe set {name!r} was analysed before per-item scores were kept"
                )
                cells.append((name, position, [reason] * (len(rows) + 1)))
                continue
            grid, reasons = [base.base], [None]
            for r in rows:
                found, why = _row_items(r, name, metric, measured, stored, base.positions)
                grid.append(found if found is not None else np.full(len(base.positions), np.nan))
                reasons.append(why)
            names.append(name)
            scores.append(np.stack(grid))
            weights.append(base.weights)
            stage_of.append(position)
            cells.append((name, position, reasons))
        if not cells:
            continue
        result = (
            transfer_matrix(scores, weights, stage_of, n_bootstrap=n_bootstrap, random_state=0)
            if names
            else None
        )
        index = {name: k for k, name in enumerate(names)}
        matrix = [
            [
                {
                    "value": result.matrix[i][index[name]] if result and name in index else None,
                    "reason": reasons[i],
                }
                for name, _, reasons in cells
            ]
            for i in range(len(rows) + 1)
        ]
        bwt = _interval(result.bwt if result else None)
        fwt = _interval(result.fwt if result else None)
        metrics[metric] = {
            "probe_sets": [
                {"name": name, "stage": stages[pos - 1].name if pos else None, "domain": domains.get(name)}
                for name, pos, _ in cells
            ],
            "matrix": matrix,
            "final_row": result.final_row if result else 0,
            "bwt": bwt,
            "fwt": fwt,
            "bwt_reason": None
            if bwt
            else "needs a stage that ended and a later row measured on its probe sets",
            "fwt_reason": None
            if fwt
            else "needs a later stage's probe set measured on the base and before it began",
        }
    return {"rows": out_rows, "metrics": metrics}


def _row_items(
    row: StageSpan,
    name: str,
    metric: str,
    measured: dict[int, frozenset[str]],
    stored: dict[tuple[int, str], list[dict[str, Any]]],
    positions: tuple[int, ...],
) -> tuple[np.ndarray | None, str | None]:
    """One row's per-item scores on a probe set, aligned to the base's items, or why there are none."""
    stage = row.stage
    if row.checkpoint_id is None:
        span = f"steps {stage.start_step}" + (
            f" to {row.end_step - 1}" if row.end_step is not None else " on"
        )
        return None, f"stage {stage.name!r} has no analysed checkpoint yet ({span})"
    if name not in measured[row.checkpoint_id]:
        return None, (
            f"the checkpoint at step {row.checkpoint_step} has no result on probe set {name!r} "
            "(attached to the run after it was analysed)"
        )
    found = items_for(stored.get((row.checkpoint_id, name)), metric)
    if found is None or found.positions != positions:
        return None, (
            f"the checkpoint at step {row.checkpoint_step} was analysed before per-item scores were "
            "kept; checkpoints registered from now on are"
        )
    return found.current, None
