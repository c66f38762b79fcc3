from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from drift.shift import SIMILARITY_BIN_EDGES
from service import retention
from service.api.deps import IdempotencyKey, Reader, SessionDep, Writer
from service.api.idempotency import run_idempotent
from service.api.pagination import LINK_HEADER, Limit, StepCursor, page_steps
from service.api.schemas import Name, Strict
from service.db import param_drift as analyses
from service.db import queries
from service.db import response_drift as store

router = APIRouter(prefix="/v1/runs/{run_ref}", tags=["response drift"])


class ProbeSetsAttach(Strict):
    probe_sets: Annotated[list[Name], Field(min_length=1, max_length=32)]


@router.post("/probe-sets")
def attach_probe_sets(run_ref: str, body: ProbeSetsAttach, request: Request, session: SessionDep,
                      principal: Writer, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Attach probe sets to a run; checkpoints registered from now on are probed with them."""

    def action() -> tuple[int, dict[str, Any]]:
        run = queries.get_run(session, ref=run_ref)
        ids = queries.probe_set_ids(session, names=body.probe_sets)
        queries.attach_probe_sets(session, run_id=run.id, probe_set_ids=ids.values())
        return 200, {"run": run.name, "probe_sets": queries.run_probe_set_names(session, run_id=run.id)}

    return run_idempotent(session, principal=principal, key=idempotency_key, method="POST",
                          path=request.url.path, payload=body.model_dump_json(), action=action)


def _with_ratio(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "forgetting_ratio": store.forgetting_ratio(row)}


@router.get("/checkpoints/{step}/response-drift")
def checkpoint_response_drift(run_ref: str, step: Annotated[int, Path(ge=0, le=2**53)], session: SessionDep,
                              _: Reader) -> dict[str, Any]:
    """Probe-set divergences (KL forward/reverse with p10–p90), measured forgetting with bootstrap
    intervals, and the statistics of the samples pushed at this step. For a run declared as stages,
    `since_stage_start`: the change on each retention set since the checkpoint's stage began."""
    run = queries.get_run(session, ref=run_ref)
    checkpoint = queries.get_checkpoint(session, run_id=run.id, step=step)
    analysis = analyses.analysis_status(session, checkpoint_id=checkpoint.id, kind="responses")
    samples = store.run_sample_series(session, run_id=run.id, after=step - 1, limit=1)
    samples = [s for s in samples if s["step"] == step]
    return {
        "run": run.name, "step": step, "status": analysis["status"], "error": analysis["error"],
        "probe_sets": [_with_ratio(r) for r in store.checkpoint_probe_results(session, checkpoint_id=checkpoint.id)],
        "samples": samples,
        "since_stage_start": retention.since_stage_start(session, run_id=run.id, step=step),
    }


@router.get("/response-drift", responses=LINK_HEADER)
def run_response_drift(run_ref: str, request: Request, response: Response, session: SessionDep, _: Reader,
                       limit: Limit = 1000, after: StepCursor = None) -> dict[str, Any]:
    """Series across steps: per probe set (with its domain), and per pushed sample batch (its sequential
    shift e-value, and per-prompt similarity to the base with counts per `similarity_bins` bin), `limit`
    steps a page in step order (a step with probe results or samples); the `Link` header points to the
    next page."""
    run = queries.get_run(session, ref=run_ref)
    probes, samples = page_steps(request, response,
                                 store.run_probe_series(session, run_id=run.id, after=after, limit=limit + 1),
                                 store.run_sample_series(session, run_id=run.id, after=after, limit=limit + 1),
                                 limit=limit)
    probe_sets: dict[str, dict[str, Any]] = {}
    for row in probes:
        entry = probe_sets.setdefault(row["probe_set"], {"domain": row["domain"], "series": []})
        entry["series"].append(_with_ratio({k: v for k, v in row.items() if k not in ("probe_set", "domain")}))
    return {"run": run.name, "probe_sets": probe_sets, "samples": samples,
            "similarity_bins": list(SIMILARITY_BIN_EDGES)}
