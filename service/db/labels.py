"""Ground-truth labels a trainer posts per step (`run_labels`): stored, and read back two ways."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.orm import Session

_UPSERT = text(
    "INSERT INTO run_labels (run_id, step, name, value) VALUES (:r, :s, :n, :v) "
    "ON CONFLICT (run_id, step, name) DO UPDATE SET value = EXCLUDED.value"
)
_ROWS = text("SELECT step, name, value FROM run_labels WHERE run_id = :r ORDER BY step, name")
_VALUES = text("SELECT step, value FROM run_labels WHERE run_id = :r AND name = :n")
_LABELLED_RUNS = text(
    "SELECT r.id, r.name, r.method, coalesce(r.tags->>'family', 'unknown') FROM runs r "
    "JOIN run_labels l ON l.run_id = r.id AND l.name = :n AND l.step = 0 ORDER BY r.name"
)
_PAGE = text(
    "SELECT step, name, value FROM run_labels WHERE run_id = :r AND step IN ("
    "SELECT DISTINCT step FROM run_labels WHERE run_id = :r AND step > :after ORDER BY step LIMIT :limit) "
    "ORDER BY step, name"
)


def upsert_labels(session: Session, *, run_id: int, step: int, labels: Mapping[str, float]) -> int:
    """Store the labels of one step (a label posted again replaces its value); returns how many."""
    if labels:
        session.execute(_UPSERT, [{"r": run_id, "s": step, "n": n, "v": v} for n, v in labels.items()])
    return len(labels)


def labels_by_step(session: Session, *, run_id: int, after: int | None = None,
                   limit: int | None = None) -> dict[int, dict[str, float]]:
    """step -> {name: value}, steps ascending: those after the step `after`, at most `limit` steps."""
    out: dict[int, dict[str, float]] = {}
    rows = session.execute(_PAGE, {"r": run_id, "after": -1 if after is None else after, "limit": limit})
    for step, name, value in rows:
        out.setdefault(int(step), {})[name] = float(value)
    return out


def labels_by_name(session: Session, *, run_id: int) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, value), ...] in step order."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step, name, value in session.execute(_ROWS, {"r": run_id}):
        out[name].append((int(step), float(value)))
    return dict(sorted(out.items()))


def label_values(session: Session, *, run_id: int, name: str) -> dict[int, float]:
    """step -> value of one label of the run."""
    return {int(step): float(value) for step, value in session.execute(_VALUES, {"r": run_id, "n": name})}


def runs_labelled_at_base(session: Session, *, name: str) -> list[tuple[int, str, str, str]]:
    """(id, name, method, family tag or "unknown") of the runs with label ``name`` at step 0, by run name."""
    return [(int(i), str(run), str(method), str(family))
            for i, run, method, family in session.execute(_LABELLED_RUNS, {"n": name})]
