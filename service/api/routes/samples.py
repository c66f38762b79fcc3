from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import IdempotencyKey, Reader, SessionDep, SettingsDep, Writer
from service.api.idempotency import request_fingerprint
from service.api.pagination import LINK_HEADER, page
from service.api.schemas import SampleOut, SamplesAccepted, SamplesCreate
from service.db import queries
from service.db.ingest import SampleBatch, store_samples
from service.errors import PayloadTooLarge
from service.queue.defer import SAMPLE_TASK, SAMPLES_QUEUE, task_name

router = APIRouter(prefix="/v1/runs/{run_ref}/samples", tags=["samples"])


@router.post("", status_code=202, response_model=SamplesAccepted)
async def post_samples(run_ref: str, body: SamplesCreate, request: Request, settings: SettingsDep,
                       principal: Writer, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Store sampled responses of the model at `step` (202 once committed)."""
    if len(body.items) > settings.max_samples_per_request:
        raise PayloadTooLarge(
            f"{len(body.items)} items in one request; send at most {settings.max_samples_per_request} "
            "per request (FORGETWATCH_MAX_SAMPLES_PER_REQUEST)"
        )
    batch = SampleBatch(run_ref=run_ref, step=body.step, probe_set=body.probe_set,
                        prompts=[item.prompt for item in body.items],
                        responses=[item.response for item in body.items],
                        logprobs=[item.logprobs for item in body.items])
    answer = await store_samples(
        request.app.state.ingest_pool, batch, token_id=principal.token_id, key=idempotency_key,
        fingerprint=request_fingerprint("POST", request.url.path, body.model_dump_json()), path=request.url.path,
        queue=SAMPLES_QUEUE, task=task_name(SAMPLE_TASK) if "samples" in settings.analyses else None)
    return JSONResponse(answer.body, status_code=answer.status_code)


@router.get("", response_model=list[SampleOut], responses=LINK_HEADER)
def list_samples(run_ref: str, request: Request, response: Response, session: SessionDep, _: Reader,
                 step: Annotated[int | None, Query(ge=0, le=2**53)] = None,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                 after: Annotated[str | None, Query(pattern=r"^\d{1,16}:\d{1,19}$", description=(
                     "cursor STEP:ID of the last sample of the previous page (the Link header carries it)"))] = None,
                 ) -> list[SampleOut]:
    """A run's samples in step order, a page at a time; the `Link` header points to the next page."""
    run = queries.get_run(session, ref=run_ref)
    names = {p.id: p.name for p in queries.list_probe_sets(session)}
    cursor = tuple(int(part) for part in after.split(":")) if after else None
    rows = queries.list_samples(session, run_id=run.id, step=step, limit=limit + 1,
                                after=(cursor[0], cursor[1]) if cursor else None)
    return [SampleOut(step=s.step, probe_set=names.get(s.probe_set_id), prompt=s.prompt, response=s.response,
                      logprobs=s.logprobs)
            for s in page(request, response, rows, limit=limit, cursor=lambda s: f"{s.step}:{s.id}")]
