from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service.api.deps import IdempotencyKey, Reader, SessionDep, Writer
from service.api.idempotency import run_idempotent
from service.api.schemas import RunCreate, RunOut
from service.db import queries
from service.db.models import Run
from service.queue import probe_tasks

router = APIRouter(prefix="/v1/runs", tags=["runs"])


def run_out(session: Session, run: Run, last_step: int | None = None) -> RunOut:
    return RunOut(
        id=run.id, name=run.name, base_model=run.base_model, method=run.method, tags=run.tags,
        probe_sets=queries.run_probe_set_names(session, run_id=run.id), last_step=last_step,
        created_at=run.created_at,
    )


@router.post("", status_code=201, response_model=RunOut,
             responses={200: {"model": RunOut, "description": "The run already existed, identical"}})
def create_run(body: RunCreate, request: Request, session: SessionDep, principal: Writer,
               idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Register a training run. The same definition again returns the existing run (200)."""

    def action() -> tuple[int, RunOut]:
        run, created = queries.create_run(session, **body.model_dump())
        if body.probe_sets:
            probe_tasks.enqueue_base(session, run.id)  # the "step 0" row: the service measures the base itself
        last = queries.last_steps(session).get(run.id)
        return (201 if created else 200), run_out(session, run, last)

    return run_idempotent(session, principal=principal, key=idempotency_key, method="POST",
                          path=request.url.path, payload=body.model_dump_json(), action=action)


@router.get("", response_model=list[RunOut])
def list_runs(session: SessionDep, _: Reader) -> list[RunOut]:
    last = queries.last_steps(session)
    return [run_out(session, run, last.get(run.id)) for run in queries.list_runs(session)]


@router.get("/{run_ref}", response_model=RunOut)
def get_run(run_ref: str, session: SessionDep, _: Reader) -> RunOut:
    """A run by id or name."""
    run = queries.get_run(session, ref=run_ref)
    return run_out(session, run, queries.last_steps(session).get(run.id))
