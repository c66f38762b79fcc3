"""Risk of a checkpoint, recomputed whenever one of its analyses finishes."""

from __future__ import annotations

import json
import logging

import procrastinate
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.db.features import run_history
from service.queue.defer import defer_job
from service.queue.tasks import TRANSIENT, blueprint, services_of
from service.risk import DEFAULT_MODEL, assess

log = logging.getLogger("forgetwatch")
NAME = "compute_risk"


def enqueue(session: Session, checkpoint_id: int) -> None:
    """Ask for a (re)assessment; one waiting request per checkpoint is enough."""
    from service.queue.app import task_name

    defer_job(session, task=task_name(NAME), queue="maintenance", args={"checkpoint_id": checkpoint_id},
              queueing_lock=f"risk-{checkpoint_id}")


@blueprint.task(name=NAME, queue="maintenance", pass_context=True, retry=TRANSIENT)
def compute_risk(context: procrastinate.JobContext, checkpoint_id: int) -> None:
    services = services_of(context)
    settings = services.settings
    with services.sessions.begin() as session:
        row = session.execute(text("SELECT run_id, step FROM checkpoints WHERE id = :c"), {"c": checkpoint_id}).first()
        if row is None:
            return
        history = run_history(session, run_id=row.run_id, up_to_step=row.step)
    result = assess(history, model_path=str(settings.risk_model_path or DEFAULT_MODEL),
                    ood_kl_nats=settings.forecast_ood_kl_nats, param_rel_l2=settings.forecast_param_rel_l2,
                    relative_drop=settings.forgetting_relative_drop)
    estimate = result.estimate
    forecasts = {**result.forecasts, "acceleration_ratio": result.acceleration_ratio}
    with services.sessions.begin() as session:
        session.execute(
            text(
                """
                INSERT INTO risk_estimates (checkpoint_id, applicable, value, model, reason, changepoint, features,
                                            forecasts, findings, computed_at)
                VALUES (:c, :applicable, :value, :model, :reason, :cp, CAST(:features AS jsonb),
                        CAST(:forecasts AS jsonb), CAST(:findings AS jsonb), now())
                ON CONFLICT (checkpoint_id) DO UPDATE SET applicable = EXCLUDED.applicable, value = EXCLUDED.value,
                    model = EXCLUDED.model, reason = EXCLUDED.reason, changepoint = EXCLUDED.changepoint,
                    features = EXCLUDED.features, forecasts = EXCLUDED.forecasts, findings = EXCLUDED.findings,
                    computed_at = now()
                """
            ),
            {"c": checkpoint_id, "applicable": estimate.applicable, "value": estimate.value,
             "model": f"{estimate.model}/{estimate.model_version}", "reason": estimate.reason,
             "cp": result.changepoint, "features": json.dumps(result.features),
             "forecasts": json.dumps(forecasts), "findings": json.dumps(result.findings)},
        )
    log.info("action=risk_computed checkpoint=%s risk=%s findings=%s", checkpoint_id, estimate.value,
             len(result.findings))
