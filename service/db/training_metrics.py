"""Training metrics reported by the trainer: stored per (run, name, step), read back as series."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.db.models import TrainingMetric


def store(session: Session, *, run_id: int, points: Iterable[tuple[int, Mapping[str, float]]]) -> int:
    """Upsert every (step, {name: value}) point; a value re-posted for the same step replaces the old one.
    Returns how many values were written."""
    rows = [{"run_id": run_id, "step": step, "name": name, "value": value}
            for step, values in points for name, value in values.items()]
    if rows:
        statement = insert(TrainingMetric).values(rows)
        session.execute(statement.on_conflict_do_update(
            index_elements=[TrainingMetric.run_id, TrainingMetric.name, TrainingMetric.step],
            set_={"value": statement.excluded.value, "recorded_at": statement.excluded.recorded_at}))
    return len(rows)


def series(session: Session, *, run_id: int, after: int | None = None, limit: int | None = None,
           names: Sequence[str] = ()) -> dict[str, list[dict[str, float]]]:
    """{name: [{"step", "value"}, ...] in step order}, names sorted: the steps after `after`, at most
    `limit` of them (steps with a value of `names` only, when names are given)."""
    where = [TrainingMetric.run_id == run_id]
    if after is not None:
        where.append(TrainingMetric.step > after)
    if names:
        where.append(TrainingMetric.name.in_(names))
    steps = select(TrainingMetric.step).where(*where).distinct().order_by(TrainingMetric.step).limit(limit)
    found: dict[str, list[dict[str, float]]] = {}
    rows = session.execute(select(TrainingMetric.name, TrainingMetric.step, TrainingMetric.value)
                           .where(*where, TrainingMetric.step.in_(steps.scalar_subquery()))
                           .order_by(TrainingMetric.name, TrainingMetric.step))
    for name, step, value in rows:
        found.setdefault(name, []).append({"step": step, "value": value})
    return found
