"""Stages of a run, its transfer matrix and each stage's retention since it began."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service import retention, transfer
from service.api.deps import IdempotencyKey, Reader, SessionDep, Writer
from service.api.idempotency import run_idempotent
from service.api.schemas import PreviewCreate, PreviewOut, Problem, StageCreate, StageName, StageOut
from service.db import previews, queries
from service.db import stages as db
from service.errors import NotFound
from service.queue.defer import enqueue_base, enqueue_preview

router = APIRouter(prefix="/v1/runs/{run_ref}", tags=["stages"])


def stages_out(session: Session, run_id: int) -> list[StageOut]:
    stages = db.run_stages(session, run_id=run_id)
    domains = db.probe_set_domains(session, run_id=run_id)
    return [
        StageOut(
            name=s.name,
            position=s.position,
            start_step=s.start_step,
            end_step=stages[i + 1].start_step if i + 1 < len(stages) else None,
            probe_sets=list(s.probe_sets),
            retention_sets=retention.retention_sets(stages, domains, s.position),
        )
        for i, s in enumerate(stages)
    ]


@router.post(
    "/stages",
    status_code=201,
    response_model=StageOut,
    responses={
        200: {"model": StageOut, "description": "The stage already existed, identical"},
        404: {"model": Problem, "description": "Unknown run or probe set"},
        409: {
            "model": Problem,
            "description": "The name is taken by another definition, the start step is not after "
            "the last stage's, or an earlier stage already trains for a probe set",
        },
    },
)
def add_stage(
    run_ref: str,
    body: StageCreate,
    request: Request,
    session: SessionDep,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Append a stage to the run: from `start_step` on, the run trains for its probe sets, and the
    probe sets of every earlier stage (and every `ood` set) are its retention sets. The same
    definition again returns the stored stage (200). Its probe sets are attached to the run:
    checkpoints registered from now on are probed with them."""

    def action() -> tuple[int, StageOut]:
        run = queries.get_run(session, ref=run_ref)
        stage, created = db.add_stage(
            session, run_id=run.id, name=body.name, start_step=body.start_step, probe_sets=body.probe_sets
        )
        if created:
            enqueue_base(session, run.id)  # the base row of the new probe sets
        return (201 if created else 200), next(s for s in stages_out(session, run.id) if s.name == stage.name)

    return run_idempotent(
        session,
        principal=principal,
        key=idempotency_key,
        method="POST",
        path=request.url.path,
        payload=body.model_dump_json(),
        action=action,
    )


@router.get("/stages", response_model=list[StageOut])
def list_stages(run_ref: str, session: SessionDep, _: Reader) -> list[StageOut]:
    """The run's stages in training order, each with the steps it covers and its retention sets."""
    return stages_out(session, queries.get_run(session, ref=run_ref).id)


@router.get(
    "/transfer", responses={404: {"model": Problem, "description": "Unknown run, or a run without stages"}}
)
def get_transfer(run_ref: str, session: SessionDep, _: Reader) -> dict[str, Any]:
    """The transfer matrix R[i][j]: the score on each probe set at the end of stage i (its last analysed
    checkpoint before the next stage starts, or the latest one of the current stage), row 0 the base;
    one matrix per metric (`accuracy`, `loglik` in nats/token) over the probe sets that measure it. A
    cell not measured yet is null with its `reason`. Backward and forward transfer (BWT, FWT; Lopez-Paz &
    Ranzato 2017) come with 95 % bootstrap intervals over probe items."""
    run = queries.get_run(session, ref=run_ref)
    return {"run": run.name, **transfer.transfer_report(session, run_id=run.id)}


@router.get(
    "/stages/{stage}/retention",
    responses={404: {"model": Problem, "description": "Unknown run or stage, or a run without stages"}},
)
def get_retention(
    run_ref: str, stage: Annotated[StageName, Path()], session: SessionDep, _: Reader
) -> dict[str, Any]:
    """Each analysed checkpoint of the stage against the stage's start (the previous stage's last
    analysed checkpoint, or the base for the first stage) on every retention set: the score then and
    now, the change with a paired-bootstrap interval over items, and the relative drop (positive = worse)."""
    run = queries.get_run(session, ref=run_ref)
    return {"run": run.name, **retention.retention_report(session, run_id=run.id, stage_name=stage)}


def _preview_out(found: previews.Preview) -> PreviewOut:
    return PreviewOut.model_validate({"stage": found.stage, "status": found.status, "n_prompts": len(found.prompts),
                                      "forecast": found.forecast, "error": found.error})


@router.post(
    "/stages/{stage}/preview",
    status_code=202,
    response_model=PreviewOut,
    responses={
        404: {"model": Problem, "description": "Unknown run, or the run has no such stage"},
        422: {"description": "Fewer than 8 prompts, more than 2000, or a prompt that is empty or holds NUL"},
    },
)
def post_preview(
    run_ref: str,
    stage: Annotated[StageName, Path()],
    body: PreviewCreate,
    request: Request,
    session: SessionDep,
    principal: Writer,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Before a stage runs, post a sample of its training prompts (8 to 2000): the worker embeds them
    (MiniLM), measures their RBF-MMD distance to each of the stage's retention sets and predicts the
    forgetting each will suffer from the relation measured on the run's earlier stages (a documented
    prior while there are none), with a 90 % interval. Answers 202 with the preview `pending`; read the
    forecast with GET. Posting again replaces the preview and its forecast."""

    def action() -> tuple[int, PreviewOut]:
        run = queries.get_run(session, ref=run_ref)
        stage_id = previews.stage_id(session, run_id=run.id, name=stage)
        previews.put_preview(session, stage_id=stage_id, prompts=body.prompts)
        enqueue_preview(session, run_id=run.id, stage=stage)
        return 202, PreviewOut(stage=stage, status="pending", n_prompts=len(body.prompts), forecast=None, error=None)

    return run_idempotent(
        session,
        principal=principal,
        key=idempotency_key,
        method="POST",
        path=request.url.path,
        payload=body.model_dump_json(),
        action=action,
    )


@router.get(
    "/stages/{stage}/preview",
    response_model=PreviewOut,
    responses={404: {"model": Problem, "description": "Unknown run or stage, or no preview posted for it"}},
)
def get_preview(run_ref: str, stage: Annotated[StageName, Path()], session: SessionDep, _: Reader) -> PreviewOut:
    """The stage's preview and, once the worker has computed it, its forecast per retention set."""
    run = queries.get_run(session, ref=run_ref)
    previews.stage_id(session, run_id=run.id, name=stage)
    found = previews.get_preview(session, run_id=run.id, name=stage)
    if found is None:
        raise NotFound(
            f"stage {stage!r} has no preview yet; post a sample of its training prompts with "
            f"POST /v1/runs/{{run}}/stages/{stage}/preview"
        )
    return _preview_out(found)
