"""Training metrics from the trainer (loss, reward, entropy, KL to the reference, teacher–student
divergence, ...), batched and idempotent, read back as series."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field, StringConstraints

from service.api.deps import IdempotencyKey, Reader, SessionDep, Writer
from service.api.idempotency import run_idempotent
from service.api.schemas import ONLY_DECLARED_KEYS, Step, Strict
from service.db import queries
from service.db import training_metrics as store

router = APIRouter(prefix="/v1/runs/{run_ref}", tags=["runs"])

MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-/]{1,128}$")]
FiniteValue = Annotated[float, Field(allow_inf_nan=False)]


class MetricPoint(Strict):
    step: Step
    values: Annotated[dict[MetricName, FiniteValue], Field(min_length=1, max_length=128, json_schema_extra=ONLY_DECLARED_KEYS)]


class MetricsIn(Strict):
    points: Annotated[list[MetricPoint], Field(min_length=1, max_length=1000)]


@router.post("/metrics", status_code=202)
def post_metrics(run_ref: str, body: MetricsIn, request: Request, session: SessionDep, principal: Writer,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Values the trainer logged, as points of (step, {name: value}); steps in any order. A value
    posted again for the same step and name replaces the first. NaN and infinity are refused (422)."""

    def action() -> tuple[int, dict[str, Any]]:
        run = queries.get_run(session, ref=run_ref)
        written = store.store(session, run_id=run.id, points=[(p.step, p.values) for p in body.points])
        return 202, {"run_id": run.id, "accepted": written}

    return run_idempotent(session, principal=principal, key=idempotency_key, method="POST",
                          path=request.url.path, payload=body.model_dump_json(), action=action)


@router.get("/metrics")
def get_metrics(run_ref: str, session: SessionDep, _: Reader) -> dict[str, Any]:
    """{"series": {name: [{"step", "value"}, ...]}}: every training metric of the run, in step order."""
    run = queries.get_run(session, ref=run_ref)
    return {"run": run.name, "series": store.series(session, run_id=run.id)}
