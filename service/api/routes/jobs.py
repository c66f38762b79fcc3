from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import Reader, SessionDep
from service.api.schemas import JobDetail
from service.db import queries

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobDetail)
def get_job(job_id: Annotated[int, Path(ge=1, le=2**62)], session: SessionDep, _: Reader) -> JobDetail:
    job = queries.get_job(session, job_id=job_id)
    return JobDetail(id=job["id"], task=job["task_name"], queue=job["queue_name"], status=job["status"],
                     attempts=job["attempts"], args=job["args"])
