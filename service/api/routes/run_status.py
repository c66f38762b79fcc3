from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field, StringConstraints

from service.api.deps import IdempotencyKey, Reader, SessionDep, SettingsDep, Writer
from service.api.idempotency import run_idempotent
from service.api.pagination import LINK_HEADER, Limit, StepCursor, page, page_steps
from service.api.schemas import ONLY_DECLARED_KEYS, Step, Strict
from service.db import labels, queries, status

router = APIRouter(prefix="/v1/runs/{run_ref}", tags=["runs"])

LabelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.\-]{1,64}$")]


class LabelsIn(Strict):
    step: Step
    labels: Annotated[dict[LabelName, float], Field(min_length=1, max_length=64, json_schema_extra=ONLY_DECLARED_KEYS)]


@router.post("/labels", status_code=202)
def post_labels(run_ref: str, body: LabelsIn, request: Request, session: SessionDep, principal: Writer,
                idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Ground truth measured by the trainer at a step (e.g. `ood_accuracy`, `in_domain_accuracy`),
    used to check the alarms and calibrate their threshold (`forgetwatch calibrate`). Re-posting a label replaces it."""

    def action() -> tuple[int, dict[str, Any]]:
        run = queries.get_run(session, ref=run_ref)
        accepted = labels.upsert_labels(session, run_id=run.id, step=body.step, labels=body.labels)
        return 202, {"run_id": run.id, "step": body.step, "accepted": accepted}

    return run_idempotent(session, principal=principal, key=idempotency_key, method="POST",
                          path=request.url.path, payload=body.model_dump_json(), action=action)


@router.get("/labels", responses=LINK_HEADER)
def get_labels(run_ref: str, request: Request, response: Response, session: SessionDep, _: Reader,
               limit: Limit = 1000, after: StepCursor = None) -> dict[str, Any]:
    """{"labels": [{"step", name: value, ...}]} in step order, a page at a time (`Link` header)."""
    run = queries.get_run(session, ref=run_ref)
    by_step = labels.labels_by_step(session, run_id=run.id, after=after, limit=limit + 1)
    steps = page(request, response, list(by_step), limit=limit, cursor=int)
    return {"run": run.name, "labels": [{"step": s, **by_step[s]} for s in steps]}


@router.get("/status")
def run_status(run_ref: str, session: SessionDep, settings: SettingsDep, _: Reader) -> dict[str, Any]:
    """What on-call and the trainer callback need: at the latest assessed checkpoint, measured ood
    forgetting (`detection`) and the forecast of it (`forecast`, or why it abstains), the probe-free
    parameter heuristic (labelled), findings, the first predicted and detected alarms, and the last
    checkpoint before any alarm (where to roll back)."""
    return status.current_status(session, run=queries.get_run(session, ref=run_ref), settings=settings)


@router.get("/risk", responses=LINK_HEADER)
def run_risk(run_ref: str, request: Request, response: Response, session: SessionDep, _: Reader,
             limit: Limit = 1000, after: StepCursor = None) -> dict[str, Any]:
    """Detection and forecast per assessed checkpoint (`value`: the forecast probability, null where
    it abstained, with `reason_code` and `reason`), `limit` steps a page in step order; the `Link`
    header points to the next page."""
    run = queries.get_run(session, ref=run_ref)
    (series,) = page_steps(request, response, status.risk_series(session, run_id=run.id, after=after, limit=limit + 1),
                           limit=limit)
    return {"run": run.name, "series": series}
