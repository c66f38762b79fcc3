from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from service import lifecycle
from service.api.deps import Admin, IdempotencyKey, Reader, SessionDep, SettingsDep, Writer
from service.api.idempotency import run_idempotent
from service.api.pagination import LINK_HEADER, Limit, page
from service.api.schemas import NO_NUL_PATTERN, Documented, Problem, RunCreate, RunOut, RunPatch
from service.db import queries
from service.db.models import Run
from service.errors import Unprocessable
from service.paths import check_base_model
from service.queue.defer import enqueue_base, enqueue_spectral_base

router = APIRouter(prefix="/v1/runs", tags=["runs"])


def run_out(session: Session, run: Run, last_step: int | None = None) -> RunOut:
    return RunOut(
        id=run.id, name=run.name, base_model=run.base_model, method=run.method, tags=run.tags,
        probe_sets=queries.run_probe_set_names(session, run_id=run.id), last_step=last_step,
        created_at=run.created_at, archived_at=run.archived_at,
    )


@router.post("", status_code=201, response_model=RunOut, responses={
    200: {"model": RunOut, "description": "The run already existed, identical"},
    403: {"model": Problem, "description": "Token scope, or base_model outside FORGETWATCH_CHECKPOINT_ROOTS"},
    422: {"model": Problem,
          "description": "Invalid body, or base_model missing, unreadable, not a model or a bare Hub id"}})
def create_run(body: RunCreate, request: Request, session: SessionDep, settings: SettingsDep, principal: Writer,
               idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Register a training run. The same definition again returns the existing run (200).

    `base_model` of a new run is checked now, so that a run no job could read is refused at once: a
    local path must exist, be readable and lie under FORGETWATCH_CHECKPOINT_ROOTS (403 otherwise); `hf://org/name@revision` must be in the service's local Hugging Face cache;
    `s3://` and `gs://` must lie under an allowed prefix. A bare Hub id (`gpt2`) is 422: write `hf://gpt2`."""

    principal.check_may_write(body.name)

    def action() -> tuple[int, RunOut]:
        if queries.run_named(session, name=body.name) is None:  # an existing name: 200 or 409 first
            check_base_model(body.base_model, settings.allowed_roots, settings.remote_prefixes,
                             hf_cache=settings.hf_cache_dir)
        run, created = queries.create_run(session, **body.model_dump())
        if created and settings.spectral and "params" in settings.analyses:
            enqueue_spectral_base(session, run.id)
        if body.probe_sets and "probes" in settings.analyses:
            enqueue_base(session, run.id)  # the "step 0" row: the service measures the base itself
        last = queries.last_steps(session).get(run.id)
        return (201 if created else 200), run_out(session, run, last)

    return run_idempotent(session, principal=principal, key=idempotency_key, method="POST",
                          path=request.url.path, payload=body.model_dump_json(), action=action)


@router.get("", response_model=list[RunOut], responses=LINK_HEADER)
def list_runs(request: Request, response: Response, session: SessionDep, _: Reader, limit: Limit = 100,
              after: Annotated[int | None, Query(ge=0, le=2**53, description=(
                  "cursor: the id of the last run of the previous page (the Link header carries it)"))] = None,
              method: Annotated[str | None, Query(max_length=64, pattern=NO_NUL_PATTERN)] = None,
              tag: Annotated[list[Annotated[str, Documented(TAG_FILTER_PATTERN)]] | None, Query(max_length=20, description=(
                  "KEY=VALUE, repeatable: runs whose tag KEY equals VALUE (compared as text)"))] = None,
              archived: Annotated[bool, Query(description="list the archived runs instead")] = False,
              ) -> list[RunOut]:
    """Runs in creation order, a page at a time; the `Link` header points to the next page."""
    tags = dict(_tag_filter(t) for t in tag or [])
    runs = queries.list_runs(session, after=after, limit=limit + 1, method=method, tags=tags, archived=archived)
    last = queries.last_steps(session)
    return [run_out(session, run, last.get(run.id))
            for run in page(request, response, runs, limit=limit, cursor=lambda r: r.id)]


# What _tag_filter accepts, for the schema: a non-empty KEY, '=', a VALUE; no NUL anywhere.
TAG_FILTER_PATTERN = r"^[^=\u0000]+=[^\u0000]*$"


def _tag_filter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or "\x00" in text:
        raise Unprocessable(f"tag filter {text!r} is not KEY=VALUE without NUL characters (e.g. ?tag=method=grpo)")
    return key, value


@router.get("/{run_ref}", response_model=RunOut)
def get_run(run_ref: str, session: SessionDep, _: Reader) -> RunOut:
    """A run by id or name."""
    run = queries.get_run(session, ref=run_ref)
    return run_out(session, run, queries.last_steps(session).get(run.id))


@router.patch("/{run_ref}", response_model=RunOut)
def patch_run(run_ref: str, body: RunPatch, session: SessionDep, principal: Writer) -> RunOut:
    """Change a run's tags (method, lr, teacher kind, seed, ...): `tags` are merged over the stored ones,
    then the keys in `remove_tags` are dropped. Registering the run again (same base and method) keeps
    these tags, whatever tags it carries."""
    run = queries.get_run(session, ref=run_ref)
    principal.check_may_write(run.name)
    run = queries.update_tags(session, run=run, tags=body.tags, remove=body.remove_tags)
    session.commit()
    return run_out(session, run, queries.last_steps(session).get(run.id))


@router.post("/{run_ref}/archive", response_model=RunOut)
def archive_run(run_ref: str, session: SessionDep, _: Writer) -> RunOut:
    """Hide a run from lists, pages and /metrics; everything measured is kept. Idempotent."""
    run = queries.set_archived(session, run=queries.get_run(session, ref=run_ref), archived=True)
    session.commit()
    return run_out(session, run, queries.last_steps(session).get(run.id))


@router.delete("/{run_ref}/archive", response_model=RunOut)
def unarchive_run(run_ref: str, session: SessionDep, _: Writer) -> RunOut:
    """Bring an archived run back into lists, pages and /metrics. Idempotent."""
    run = queries.set_archived(session, run=queries.get_run(session, ref=run_ref), archived=False)
    session.commit()
    return run_out(session, run, queries.last_steps(session).get(run.id))


@router.delete("/{run_ref}", status_code=204, response_class=Response)
def delete_run(run_ref: str, request: Request, session: SessionDep, _: Admin) -> Response:
    """Delete a run with everything measured for it and its uploaded files. Needs an admin token."""
    lifecycle.delete_run(session, request.app.state.settings, queries.get_run(session, ref=run_ref))
    return Response(status_code=204)
