"""A run's forgetting statements per checkpoint: stored by the risk task, read by `/status`, the
run page, the metrics and the demo."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from service.db.models import Run
from service.db.response_drift import run_base_scores
from service.settings import Settings

PARAMETER_HEURISTIC_LABEL = "probe-free parameter heuristic (not a forecast, never an alarm)"


def store_assessment(session: Session, *, checkpoint_id: int, applicable: bool, value: float | None, model: str,
                     reason: str | None, reason_code: str | None, changepoint: bool, features: dict[str, Any],
                     forecasts: dict[str, Any], findings: list[dict[str, Any]], detected: bool,
                     detection: dict[str, Any], heuristic: dict[str, Any]) -> None:
    """Replace the checkpoint's assessment (idempotent)."""
    session.execute(
        text(
            """
            INSERT INTO risk_estimates (checkpoint_id, applicable, value, model, reason, reason_code, changepoint,
                                        features, forecasts, findings, detected, detection, heuristic, computed_at)
            VALUES (:c, :applicable, :value, :model, :reason, :code, :cp, CAST(:features AS jsonb),
                    CAST(:forecasts AS jsonb), CAST(:findings AS jsonb), :detected, CAST(:detection AS jsonb),
                    CAST(:heuristic AS jsonb), now())
            ON CONFLICT (checkpoint_id) DO UPDATE SET applicable = EXCLUDED.applicable, value = EXCLUDED.value,
                model = EXCLUDED.model, reason = EXCLUDED.reason, reason_code = EXCLUDED.reason_code,
                changepoint = EXCLUDED.changepoint, features = EXCLUDED.features, forecasts = EXCLUDED.forecasts,
                findings = EXCLUDED.findings, detected = EXCLUDED.detected, detection = EXCLUDED.detection,
                heuristic = EXCLUDED.heuristic, computed_at = now()
            """
        ),
        {"c": checkpoint_id, "applicable": applicable, "value": value, "model": model, "reason": reason,
         "code": reason_code, "cp": changepoint, "features": json.dumps(features), "forecasts": json.dumps(forecasts),
         "findings": json.dumps(findings), "detected": detected, "detection": json.dumps(detection),
         "heuristic": json.dumps(heuristic)},
    )


_SERIES = text(
    "SELECT c.step, r.applicable, r.value, r.model, r.reason, r.reason_code, r.changepoint, r.forecasts, "
    "r.findings, r.detected, r.detection, r.heuristic, r.features FROM checkpoints c JOIN risk_estimates r "
    "ON r.checkpoint_id = c.id WHERE c.run_id = :r AND c.step > :after ORDER BY c.step LIMIT :limit"
)


def _predicted(row: dict[str, Any], threshold: float) -> bool:
    return bool(row["applicable"] and row["value"] is not None and row["value"] >= threshold)


def run_status(session: Session, *, run: Run, threshold: float, horizon: int) -> dict[str, Any]:
    """The base's own scores (measured by the service), the latest checkpoint's scale-free features,
    detection and forecast, the first alarm of each kind, and the last checkpoint before any alarm
    (where to roll back)."""
    counts: dict[str, int] = {}
    last_step = None
    for step, state in session.execute(text("SELECT step, status FROM checkpoints WHERE run_id = :r ORDER BY step"),
                                       {"r": run.id}):
        counts[state] = counts.get(state, 0) + 1
        last_step = step
    assessed = risk_series(session, run_id=run.id)
    latest = assessed[-1] if assessed else None
    first_predicted = next((r["step"] for r in assessed if _predicted(r, threshold)), None)
    first_detected = next((r["step"] for r in assessed if r["detected"]), None)
    last_safe = None
    for r in assessed:
        if r["detected"] or _predicted(r, threshold):
            break
        last_safe = r["step"]
    forecast = None if latest is None else {
        "step": latest["step"], "applicable": latest["applicable"], "probability": latest["value"],
        "predicted": _predicted(latest, threshold), "threshold": threshold, "horizon_checkpoints": horizon,
        "model": latest["model"], "reason_code": latest["reason_code"], "reason": latest["reason"],
        **{k: (latest["forecasts"] or {}).get("forgetting", {}).get(k) for k in (
            "n_points", "checkpoints_to_crossing", "checkpoints_to_crossing_low", "checkpoints_to_crossing_high",
            "steps_per_checkpoint")},
    }
    heuristic = None if latest is None else {"label": PARAMETER_HEURISTIC_LABEL, **(latest["heuristic"] or {})}
    return {
        "run": run.name,
        "method": run.method,
        "last_step": last_step,
        "checkpoints": counts,
        "base": [{k: v for k, v in b.items() if k != "measured_at"} for b in run_base_scores(session, run_id=run.id)],
        "features": None if latest is None else latest["features"],
        "detection": None if latest is None else {"step": latest["step"], **(latest["detection"] or {})},
        "forecast": forecast,
        "parameter_heuristic": heuristic,
        "changepoint": None if latest is None else latest["changepoint"],
        "trends": None if latest is None else {k: v for k, v in (latest["forecasts"] or {}).items()
                                               if k != "forgetting"},
        "findings": latest["findings"] if latest else [],
        "first_predicted_step": first_predicted,
        "first_detected_step": first_detected,
        "last_safe_step": last_safe,
    }


def current_status(session: Session, *, run: Run, settings: Settings) -> dict[str, Any]:
    """`run_status` with the alarm settings in force: the body of `GET /v1/runs/{run}/status`, shown
    as it is by the run pages and `forgetwatch runs show`."""
    return run_status(session, run=run, threshold=settings.forecast_alarm_probability,
                      horizon=settings.forecast_horizon_checkpoints)


def risk_series(session: Session, *, run_id: int, after: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
    """Detection and forecast per assessed checkpoint, in step order (forecast null where it abstained,
    with the reason): the steps after `after`, at most `limit` of them (all when None)."""
    params = {"r": run_id, "after": -1 if after is None else after, "limit": limit}
    return [dict(r) for r in session.execute(_SERIES, params).mappings()]
