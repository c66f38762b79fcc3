"""Forgetting detection and forecast of a checkpoint, recomputed whenever one of its analyses finishes."""

from __future__ import annotations

import dataclasses
import logging

import procrastinate
from sqlalchemy.orm import sessionmaker

from service.db.encoding import json_safe
from service.db.features import ood_history, run_history
from service.db.queries import checkpoint_run_step
from service.db.response_drift import run_base_scores
from service.db.status import store_assessment
from service.queue.defer import RISK_TASK
from service.queue.tasks import TRANSIENT, blueprint, services_of
from service.risk import assess
from service.settings import Settings

log = logging.getLogger("forgetwatch")
NAME = RISK_TASK  # requested with service.queue.defer.enqueue_risk


@blueprint.task(name=NAME, queue="maintenance", pass_context=True, retry=TRANSIENT)
def compute_risk(context: procrastinate.JobContext, checkpoint_id: int) -> None:
    services = services_of(context)
    assess_checkpoint(services.sessions, services.settings, checkpoint_id)


def assess_checkpoint(sessions: sessionmaker, settings: Settings, checkpoint_id: int) -> None:
    """Assess one checkpoint from what is stored up to its step, and replace its stored assessment."""
    with sessions.begin() as session:
        found = checkpoint_run_step(session, checkpoint_id=checkpoint_id)
        if found is None:
            return
        run_id, step = found
        history = run_history(session, run_id=run_id, up_to_step=step)
        ood = ood_history(session, run_id=run_id, up_to_step=step)
        base = [b["entropy"] for b in run_base_scores(session, run_id=run_id)
                if b["domain"] == "ood" and b["status"] == "ready" and b["entropy"] is not None]
    result = assess(history, ood, relative_drop=settings.forgetting_relative_drop,
                    horizon=settings.forecast_horizon_checkpoints, ood_kl_nats=settings.forecast_ood_kl_nats,
                    param_rel_l2=settings.forecast_param_rel_l2, model=settings.forecast_model,
                    base_entropy_ood=sum(base) / len(base) if base else None)
    forecast = result.forecast
    forecasts = {**result.forecasts, "acceleration_ratio": result.acceleration_ratio,
                 "forgetting": dataclasses.asdict(forecast)}
    with sessions.begin() as session:
        store_assessment(session, checkpoint_id=checkpoint_id, applicable=forecast.applicable,
                         value=forecast.probability, model=forecast.model, reason=forecast.reason,
                         reason_code=forecast.reason_code, changepoint=result.changepoint,
                         features=json_safe(result.features), forecasts=json_safe(forecasts),
                         findings=json_safe(result.findings), detected=bool(result.detection["detected"]),
                         detection=json_safe(result.detection), heuristic=json_safe(dataclasses.asdict(result.heuristic)))
    log.info("action=risk_computed checkpoint=%s forecast=%s detected=%s findings=%s", checkpoint_id,
             forecast.probability, result.detection["detected"], len(result.findings))
