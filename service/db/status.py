"""A run's current state for on-call and trainers: latest risk, findings, rollback point."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from service.db.models import Run


def run_status(session: Session, *, run: Run, threshold: float) -> dict[str, Any]:
    rows = session.execute(
        text("SELECT c.step, c.status, r.applicable, r.value, r.model, r.reason, r.findings, r.forecasts, "
             "r.changepoint FROM checkpoints c LEFT JOIN risk_estimates r ON r.checkpoint_id = c.id "
             "WHERE c.run_id = :r ORDER BY c.step"), {"r": run.id}).mappings().all()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    assessed = [r for r in rows if r["model"] is not None]
    latest = assessed[-1] if assessed else None
    last_safe = None
    for r in assessed:
        if r["applicable"] and r["value"] is not None and r["value"] >= threshold:
            break
        last_safe = r["step"]
    return {
        "run": run.name,
        "method": run.method,
        "last_step": rows[-1]["step"] if rows else None,
        "checkpoints": counts,
        "risk": None if latest is None else {
            "step": latest["step"], "value": latest["value"], "applicable": latest["applicable"],
            "threshold": threshold, "model": latest["model"], "reason": latest["reason"],
            "changepoint": latest["changepoint"], "forecasts": latest["forecasts"],
        },
        "findings": latest["findings"] if latest else [],
        "last_safe_step": last_safe,
    }


def risk_series(session: Session, *, run_id: int) -> list[dict[str, Any]]:
    """Risk per assessed checkpoint, in step order (value null where no model applied, with the reason)."""
    rows = session.execute(
        text("SELECT c.step, r.applicable, r.value, r.model, r.reason, r.changepoint, r.forecasts, r.findings "
             "FROM checkpoints c JOIN risk_estimates r ON r.checkpoint_id = c.id WHERE c.run_id = :r "
             "ORDER BY c.step"), {"r": run_id}).mappings().all()
    return [dict(r) for r in rows]
