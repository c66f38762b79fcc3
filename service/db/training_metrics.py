"""Training metrics reported by the trainer: stored per (run, name, step), read back as series."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def series(session: Session, *, run_id: int) -> dict[str, list[dict[str, float]]]:
    """{name: [{"step", "value"}, ...] in step order}, names sorted."""
    found: dict[str, list[dict[str, float]]] = {}
    rows = session.execute(select(TrainingMetric.name, TrainingMetric.step, TrainingMetric.value)
                           .where(TrainingMetric.run_id == run_id)
                           .order_by(TrainingMetric.name, TrainingMetric.step))
    for name, step, value in rows:
        found.setdefault(name, []).append({"step": step, "value": value})
    return found
