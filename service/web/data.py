"""Read-only queries behind the pages, for what the API's query functions do not already cover.

Each function takes the session as a keyword argument and only reads. Parameter drift comes from
`service.db.param_drift.run_series` and the status block from `service.db.status`, as in the API, so that
the page and the API cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from service.db import labels, queries, status
from service.settings import Settings


def run_status(session: Session, *, settings: Settings, run_ref: str) -> dict[str, Any]:
    """Exactly the body of `GET /v1/runs/{run}/status` (detection, forecast, findings, last safe step)."""
    return status.current_status(session, run=queries.get_run(session, ref=run_ref), settings=settings)


def label_series(session: Session, *, run_id: int) -> dict[str, list[tuple[int, float]]]:
    """Ground-truth labels posted by the trainer: name -> [(step, value), ...] in step order."""
    return labels.labels_by_name(session, run_id=run_id)


def mean_by_step(rows: Iterable[dict[str, Any]], key: str, *,
                 where: dict[str, Any] | None = None) -> tuple[list[int], list[float]]:
    """Mean of `key` over the rows of each step (probe sets / sample groups), skipping nulls, as
    `service.db.features` averages them for the findings and trends."""
    sums: dict[int, list[float]] = {}
    for row in rows:
        if where and any(row.get(k) != v for k, v in where.items()):
            continue
        value = row.get(key)
        if value is None:
            continue
        sums.setdefault(int(row["step"]), []).append(float(value))
    steps = sorted(sums)
    return steps, [sum(sums[s]) / len(sums[s]) for s in steps]
