"""`GET /compare`: runs side by side, the page of `GET /v1/compare` (same selection, same numbers).

`?runs=a,b,c`, else `?tag=KEY=VALUE` or `KEY:VALUE` (repeatable; `method` matches the run's method), else
the newest active runs; `?step=` and `?gain=` move the matched point. Served as the run pages are
(`service.web.pages`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from service import compare
from service.api.deps import OptionalReader, SessionDep
from service.errors import ForgetwatchError
from service.web import compare_plots
from service.web.pages import locked
from service.web.templates import page

router = APIRouter(include_in_schema=False)
RUN_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]*$")


def _number(text: str | None, name: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"?{name}={text!r} is not a finite number")
    return value


def _plots(body: dict[str, Any]) -> list[dict[str, Any]]:
    runs = body["runs"]
    figures: list[tuple[str, Callable[[], str | None], str]] = [
        (
            "pareto",
            lambda: compare_plots.pareto(runs, efficient=body["pareto_at_step"]),
            "No run has probe results in both domains yet: attach in-domain and ood probe sets to the runs.",
        ),
    ]
    for key, title in body["overlays"].items():
        figures.append(
            (
                key,
                functools.partial(compare_plots.overlay, runs, series=key, title=title),
                f"No run has {title} yet.",
            )
        )
    return [
        {
            "key": key.replace(":", "-"),
            "width": "wide" if key == "pareto" else "",
            "svg": Markup(svg) if (svg := draw()) is not None else None,
            "empty": empty,
        }
        for key, draw, empty in figures
    ]


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    session: SessionDep,
    reader: OptionalReader,
    runs: str | None = None,
    tag: Annotated[list[str] | None, Query()] = None,
    step: str | None = None,
    gain: str | None = None,
) -> HTMLResponse:
    if (denied := locked(request, reader)) is not None:
        return denied
    refs = [r for r in (runs or "").split(",") if r]
    try:
        if any(not RUN_REF.match(r) for r in refs):
            raise ValueError(f"?runs={runs!r} is not a comma-separated list of run names or ids")
        matched_step, matched_gain = _number(step, "step"), _number(gain, "gain")
        chosen, omitted = compare.select_runs(session, runs=refs, tags=tag or [])
    except (ValueError, ForgetwatchError) as error:
        return page(
            "compare.html",
            status_code=getattr(error, "status_code", 422),
            title="Compare runs",
            error=str(error),
            body=None,
            plots=[],
            omitted=0,
        )
    body = compare.compare_runs(session, runs=chosen, step=matched_step, gain=matched_gain)
    return page(
        "compare.html", title="Compare runs", error=None, body=body, plots=_plots(body), omitted=omitted
    )
