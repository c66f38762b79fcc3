from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from service.api.deps import Reader, SessionDep
from service.api.pagination import LINK_HEADER, Limit, page
from service.api.schemas import JobDetail, JobKind, JobListed, JobStatus
from service.db import jobs, queries
from service.queue.defer import NAMESPACE, task_name
from service.queue.defer import PARAM_AGGREGATE as AGGREGATE
from service.queue.defer import PARAM_PART as PART
from service.queue.defer import PARAM_PLAN as PLAN
from service.queue.defer import PARAMS_KIND as PARAMS
from service.queue.defer import PROBE_TASK as PROBES
from service.queue.defer import RESPONSES_KIND as RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ANALYSIS_OF = {
    task_name(PLAN): PARAMS,
    task_name(PART): PARAMS,
    task_name(AGGREGATE): PARAMS,
    task_name(PROBES): RESPONSES,
}
"""Which analysis of its checkpoint a job's failure is recorded on (its `error` in the list)."""


@router.get("", response_model=list[JobListed], responses=LINK_HEADER)
def list_jobs(
    request: Request,
    response: Response,
    session: SessionDep,
    _: Reader,
    limit: Limit = 100,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**62,
            description=("cursor: the last job id of the previous page (the Link header carries it)"),
        ),
    ] = None,
    run: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description=(
                "only the jobs of this run (name or id): those for its checkpoints and for the run itself"
            ),
        ),
    ] = None,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    kind: Annotated[JobKind | None, Query(description="only jobs of this task")] = None,
) -> list[JobListed]:
    """Jobs in id order (oldest first), a page at a time (`Link` header): what ran, what waits and
    what failed, with the reason a failed analysis gave (`error`: what to do about it)."""
    run_id = queries.get_run(session, ref=run).id if run is not None else None
    rows = jobs.list_jobs(
        session,
        namespace=NAMESPACE,
        analysis_of=ANALYSIS_OF,
        run_id=run_id,
        status=status,
        task=task_name(kind) if kind else None,
        after=after,
        limit=limit + 1,
    )
    return [
        JobListed(
            id=j["id"],
            task=j["task_name"],
            kind=j["task_name"].partition(":")[2],
            queue=j["queue_name"],
            status=j["status"],
            attempts=j["attempts"],
            args=j["args"],
            run=j["run"],
            step=j["step"],
            error=j["error"],
        )
        for j in page(request, response, rows, limit=limit, cursor=lambda j: j["id"])
    ]


@router.get("/{job_id}", response_model=JobDetail)
def get_job(job_id: Annotated[int, Path(ge=1, le=2**62)], session: SessionDep, _: Reader) -> JobDetail:
    job = queries.get_job(session, job_id=job_id)
    return JobDetail(
        id=job["id"],
        task=job["task_name"],
        queue=job["queue_name"],
        status=job["status"],
        attempts=job["attempts"],
        args=job["args"],
    )
