from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import IdempotencyKey, Reader, SessionDep, Writer
from service.api.idempotency import run_idempotent
from service.api.pagination import LINK_HEADER, Limit, NameCursor, page
from service.api.schemas import ProbeItemIn, ProbeSetCreate, ProbeSetOut, ProbeSetSummary
from service.db import queries

router = APIRouter(prefix="/v1/probe-sets", tags=["probe sets"])


def probe_set_out(session, name: str) -> ProbeSetOut:
    probe_set, items = queries.get_probe_set(session, name=name)
    return ProbeSetOut(
        id=probe_set.id, name=probe_set.name, domain=probe_set.domain, format=probe_set.format,
        description=probe_set.description,
        items=[ProbeItemIn(prompt=i.prompt, messages=i.messages, reference=i.reference, answer=i.answer)
               for i in items],
    )


@router.post("", status_code=201, response_model=ProbeSetOut,
             responses={200: {"model": ProbeSetOut, "description": "Already existed, identical"}})
def create_probe_set(body: ProbeSetCreate, request: Request, session: SessionDep, principal: Writer,
                     idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Create an immutable probe set: prompts (or, with `format: "chat"`, conversations rendered with
    the base tokenizer's chat template) with optional reference completions and answers."""
    principal.check_may_write(body.name, "probe set")

    def action() -> tuple[int, ProbeSetOut]:
        _, created = queries.create_probe_set(
            session, name=body.name, domain=body.domain, description=body.description, format=body.format,
            items=body.stored_items(),
        )
        return (201 if created else 200), probe_set_out(session, body.name)

    return run_idempotent(session, principal=principal, key=idempotency_key, method="POST",
                          path=request.url.path, payload=body.model_dump_json(), action=action)


@router.get("", response_model=list[ProbeSetSummary], responses=LINK_HEADER)
def list_probe_sets(request: Request, response: Response, session: SessionDep, _: Reader, limit: Limit = 100,
                    after: NameCursor = None,
                    domain: Annotated[str | None, Query(max_length=64, description="only this domain")] = None,
                    ) -> list[ProbeSetSummary]:
    """Probe sets in name order, a page at a time; the `Link` header points to the next page."""
    rows = queries.list_probe_sets(session, after=after, limit=limit + 1, domain=domain)
    return [ProbeSetSummary(id=p.id, name=p.name, domain=p.domain, description=p.description)
            for p in page(request, response, rows, limit=limit, cursor=lambda p: p.name)]


@router.get("/{name}", response_model=ProbeSetOut)
def get_probe_set(name: str, session: SessionDep, _: Reader) -> ProbeSetOut:
    return probe_set_out(session, name)
