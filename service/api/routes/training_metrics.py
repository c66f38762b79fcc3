"""Training metrics from the trainer (loss, reward, entropy, KL to the reference, teacher–student
divergence, ...), batched and idempotent, read back as series."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field, StringConstraints

from service.api.deps import IdempotencyKey, Reader, SessionDep, Writer
from service.api.idempotency import run_idempotent
from service.api.pagination import LINK_HEADER, Limit, StepCursor, page
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


@router.get("/metrics", responses=LINK_HEADER)
def get_metrics(run_ref: str, request: Request, response: Response, session: SessionDep, _: Reader,
                limit: Limit = 1000, after: StepCursor = None,
                name: Annotated[list[MetricName] | None, Query(max_length=128, description=(
                    "repeatable: only these metrics"))] = None) -> dict[str, Any]:
    """{"series": {name: [{"step", "value"}, ...]}}: the run's training metrics in step order, `limit`
    steps a page; the `Link` header points to the next page."""
    run = queries.get_run(session, ref=run_ref)
    found = store.series(session, run_id=run.id, after=after, limit=limit + 1, names=name or ())
    steps = sorted({point["step"] for points in found.values() for point in points})
    kept = page(request, response, steps, limit=limit, cursor=int)
    if len(kept) < len(steps):  # the one step past the page was read only to know there is a next page
        found = {k: points for k, v in found.items() if (points := [p for p in v if p["step"] <= kept[-1]])}
    return {"run": run.name, "series": found}
