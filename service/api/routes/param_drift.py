from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from service.api.deps import Reader, SessionDep
from service.api.pagination import LINK_HEADER, Limit, StepCursor, page_steps
from service.db import param_drift as store
from service.db import queries

router = APIRouter(prefix="/v1/runs/{run_ref}", tags=["parameter drift"])


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in store.SUMMARY_COLUMNS}


@router.get("/checkpoints/{step}/param-drift")
def checkpoint_param_drift(run_ref: str, step: Annotated[int, Path(ge=0, le=2**53)], session: SessionDep,
                           _: Reader, tensors: Annotated[bool, Query()] = False) -> dict[str, Any]:
    """Drift of one checkpoint against the base: global, per block (layer), per module kind; with
    `?tensors=true` also one row per tensor. `status` says whether the analysis is finished."""
    run = queries.get_run(session, ref=run_ref)
    checkpoint = queries.get_checkpoint(session, run_id=run.id, step=step)
    analysis = store.analysis_status(session, checkpoint_id=checkpoint.id, kind="params")
    summaries = store.checkpoint_summaries(session, checkpoint_id=checkpoint.id)
    overall = next((s for s in summaries if s["scope"] == "global"), None)
    body: dict[str, Any] = {
        "run": run.name, "step": step, "status": analysis["status"], "error": analysis["error"],
        "previous": analysis["details"].get("previous", []),
        "global": _metrics(overall) if overall else None,
        "blocks": [{"block": int(s["key"]), **_metrics(s)} for s in summaries if s["scope"] == "block"],
        "modules": [{"module": s["key"], **_metrics(s)} for s in summaries if s["scope"] == "module"],
        "mismatches": overall["data"].get("mismatches") if overall else None,
        "changed_ratio_by_dtype": overall["data"].get("changed_ratio_by_dtype") if overall else None,
    }
    body["blocks"].sort(key=lambda b: b["block"])
    if tensors:
        body["tensors"] = store.checkpoint_tensors(session, checkpoint_id=checkpoint.id)
    return body


@router.get("/param-drift", responses=LINK_HEADER)
def run_param_drift(run_ref: str, request: Request, response: Response, session: SessionDep, _: Reader,
                    limit: Limit = 1000, after: StepCursor = None) -> dict[str, Any]:
    """Time series across steps: global drift and drift per block, `limit` steps a page in step order;
    the `Link` header points to the next page."""
    run = queries.get_run(session, ref=run_ref)
    (series,) = page_steps(request, response, store.run_series(session, run_id=run.id, after=after, limit=limit + 1),
                           limit=limit)
    global_series = [{"step": r["step"], **_metrics(r)} for r in series if r["scope"] == "global"]
    blocks: dict[str, list[dict[str, Any]]] = {}
    for r in series:
        if r["scope"] == "block":
            blocks.setdefault(r["key"], []).append(
                {"step": r["step"], "relative_l2_distance": r["relative_l2_distance"],
                 "normalized_spectral_shift": r["normalized_spectral_shift"]})
    return {"run": run.name, "global": global_series,
            "blocks": {k: blocks[k] for k in sorted(blocks, key=int)}}
