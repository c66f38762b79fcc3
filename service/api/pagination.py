"""Cursor pagination for every list that can grow: `?limit=N&after=CURSOR`, the next page's URL in
the `Link` header (RFC 8288, `rel="next"`), absent on the last page. The cursor is the sort key of
the last item of a page (an id, a step, a name, or STEP:ID for samples), so pages stay stable while
rows are added."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query, Request, Response

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=1000, description="items per page")]
StepCursor = Annotated[int | None, Query(ge=0, le=2**53, description=(
    "cursor: the last step of the previous page (the Link header carries it)"))]
NameCursor = Annotated[str | None, Query(max_length=200, description=(
    "cursor: the last name of the previous page (the Link header carries it)"))]

LINK_HEADER: dict[int | str, dict[str, Any]] = {200: {"headers": {"Link": {
    "description": '`<URL>; rel="next"` when there are more items: the next page', "schema": {"type": "string"}}}}}
"""The `responses=` of a paginated route, so the OpenAPI schema documents the header."""


def page(request: Request, response: Response, rows: Sequence[T], *, limit: int,
         cursor: Callable[[T], int | str]) -> Sequence[T]:
    """The first `limit` of `rows` (fetched with `limit + 1`, in cursor order); when there were more,
    a `Link` header to the page after them (the same query, with `after` set to the last cursor)."""
    if len(rows) <= limit:
        return rows
    rows = rows[:limit]
    response.headers["Link"] = f'<{request.url.include_query_params(after=cursor(rows[-1]))}>; rel="next"'
    return rows


def page_steps(request: Request, response: Response, *series: list[dict[str, Any]],
               limit: int) -> tuple[list[dict[str, Any]], ...]:
    """Rows of per-step series (each fetched with its first `limit + 1` steps after the cursor) cut to
    the first `limit` steps of them all, through `page`: the `Link` header carries the last step."""
    steps = sorted({row["step"] for rows in series for row in rows})
    kept = page(request, response, steps, limit=limit, cursor=int)
    if len(kept) == len(steps):
        return series
    return tuple([row for row in rows if row["step"] <= kept[-1]] for rows in series)
