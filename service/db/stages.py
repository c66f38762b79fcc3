"""Stages of a run and the per-item probe scores the transfer matrix is computed from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.db.models import ProbeSet, Run, RunStage, RunStageProbeSet
from service.db.queries import attach_probe_sets, probe_set_ids
from service.errors import Conflict


@dataclass(frozen=True)
class Stage:
    """A stage as stored: its 1-based `position`, `start_step` and the probe sets it trains for."""

    name: str
    position: int
    start_step: int
    probe_sets: tuple[str, ...]


def run_stages(session: Session, *, run_id: int) -> list[Stage]:
    """The run's stages in order (empty for a run without stages)."""
    rows = session.execute(
        select(RunStage.id, RunStage.name, RunStage.position, RunStage.start_step)
        .where(RunStage.run_id == run_id)
        .order_by(RunStage.position)
    ).all()
    names: dict[int, list[str]] = {row.id: [] for row in rows}
    if names:
        for stage_id, name in session.execute(
            select(RunStageProbeSet.stage_id, ProbeSet.name)
            .join(ProbeSet, ProbeSet.id == RunStageProbeSet.probe_set_id)
            .where(RunStageProbeSet.stage_id.in_(names))
            .order_by(ProbeSet.name)
        ):
            names[stage_id].append(name)
    return [Stage(row.name, row.position, row.start_step, tuple(names[row.id])) for row in rows]


def add_stage(
    session: Session, *, run_id: int, name: str, start_step: int, probe_sets: Sequence[str]
) -> tuple[Stage, bool]:
    """Append a stage; the same definition again returns the stored one (False). A reused name with
    another definition, a start step not after the last stage's, or a probe set an earlier stage
    already trains for conflicts, and nothing is stored. Its probe sets are attached to the run."""
    session.execute(select(Run.id).where(Run.id == run_id).with_for_update())  # one append at a time per run
    ids = probe_set_ids(session, names=probe_sets)
    stages = run_stages(session, run_id=run_id)
    wanted = tuple(sorted(set(probe_sets)))
    for stage in stages:
        if stage.name == name:
            if (stage.start_step, stage.probe_sets) == (start_step, wanted):
                return stage, False
            raise Conflict(
                f"stage {name!r} already exists with start_step={stage.start_step} and probe_sets="
                f"{list(stage.probe_sets)}; stages cannot be redefined: give the new stage another name"
            )
    if stages and start_step <= stages[-1].start_step:
        raise Conflict(
            f"stage {name!r} starts at step {start_step}, not after the last stage {stages[-1].name!r} "
            f"(step {stages[-1].start_step}); stages are appended in training order, each starting later"
        )
    claimed = {p: stage.name for stage in stages for p in stage.probe_sets}
    taken = sorted(p for p in wanted if p in claimed)
    if taken:
        raise Conflict(
            f"probe sets {taken} are already trained for by stage {claimed[taken[0]]!r}; an earlier stage's "
            "probe sets are retention sets of every later stage already: list only what this stage trains for"
        )
    row = RunStage(run_id=run_id, position=len(stages) + 1, name=name, start_step=start_step)
    session.add(row)
    session.flush()
    session.add_all(RunStageProbeSet(stage_id=row.id, probe_set_id=ids[p]) for p in wanted)
    attach_probe_sets(session, run_id=run_id, probe_set_ids=ids.values())
    session.flush()
    return Stage(name, row.position, start_step, wanted), True


def analysed_checkpoints(session: Session, *, run_id: int) -> list[tuple[int, int, frozenset[str]]]:
    """(checkpoint id, step, probe sets with a stored result) of each checkpoint with probe results,
    in step order."""
    rows = session.execute(
        text(
            "SELECT c.id, c.step, array_agg(s.name) AS probe_sets FROM probe_drift p "
            "JOIN checkpoints c ON c.id = p.checkpoint_id JOIN probe_sets s ON s.id = p.probe_set_id "
            "WHERE c.run_id = :r GROUP BY c.id, c.step ORDER BY c.step"
        ),
        {"r": run_id},
    ).all()
    return [(row.id, row.step, frozenset(row.probe_sets)) for row in rows]


def probe_set_domains(session: Session, *, run_id: int) -> dict[str, str]:
    """Domain of each probe set attached to the run."""
    rows = session.execute(
        text(
            "SELECT s.name, s.domain FROM probe_sets s JOIN run_probe_sets r ON r.probe_set_id = s.id "
            "WHERE r.run_id = :r"
        ),
        {"r": run_id},
    ).all()
    return {row.name: row.domain for row in rows}


def probe_set_metrics(session: Session, *, run_id: int) -> dict[str, set[str]]:
    """What each of the run's probe sets measures: `accuracy` (some item has an answer), `loglik`
    (some item has a reference completion)."""
    rows = session.execute(
        text(
            "SELECT s.name, bool_or(i.answer IS NOT NULL) AS accuracy, bool_or(i.reference IS NOT NULL) AS loglik "
            "FROM probe_sets s JOIN run_probe_sets r ON r.probe_set_id = s.id "
            "JOIN probe_items i ON i.probe_set_id = s.id WHERE r.run_id = :r GROUP BY s.name"
        ),
        {"r": run_id},
    ).all()
    return {row.name: {m for m in ("accuracy", "loglik") if getattr(row, m)} for row in rows}


ITEM_COLUMNS = (
    "position",
    "correct",
    "base_correct",
    "mean_logprob",
    "base_mean_logprob",
    "n_tokens",
    "from_reference",
)


def item_scores(
    session: Session, *, checkpoint_ids: Sequence[int]
) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Per-probe rows of these checkpoints, keyed by (checkpoint id, probe set name), in position order."""
    out: dict[tuple[int, str], list[dict[str, Any]]] = {}
    if not checkpoint_ids:
        return out
    rows = session.execute(
        text(
            f"SELECT i.checkpoint_id, s.name AS probe_set, {', '.join('i.' + c for c in ITEM_COLUMNS)} "
            "FROM probe_drift_items i JOIN probe_sets s ON s.id = i.probe_set_id "
            "WHERE i.checkpoint_id = ANY(:ids) ORDER BY i.checkpoint_id, s.name, i.position"
        ),
        {"ids": list(checkpoint_ids)},
    ).mappings()
    for row in rows:
        out.setdefault((row["checkpoint_id"], row["probe_set"]), []).append(dict(row))
    return out
