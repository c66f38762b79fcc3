"""The pages' templates: Jinja2 with autoescape (`service/web/html/`), the formats they use, and the
response every page shares.

Everything a template prints is escaped unless it is already markup (a macro's output, a plot's
SVG). Numbers shown on a page also carry their exact value in `data-value` (the `num` macro), so that
a test (or a script) can compare them with the API's JSON without parsing the rounded text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

# Pages are self-contained: inline CSS and SVG (matplotlib embeds rasters as data: URIs), no
# scripts, nothing fetched from anywhere else. The policy makes any slip visible in the browser.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def run_path(name: str) -> str:
    """Link to a run's page; run names may hold '/', '+', '@', ':'."""
    return "/runs/" + quote(name, safe="")


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def risk_class(value: float | None, *, applicable: bool, threshold: float) -> str:
    if not applicable or value is None:
        return "risk-na"
    if value >= threshold:
        return "risk-high"
    if value >= threshold / 2:
        return "risk-mid"
    return "risk-low"


def sorted_findings(findings: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(findings, key=lambda f: SEVERITY_RANK.get(str(f.get("severity")), 3))


def count_parts(counts: dict[str, int]) -> list[str]:
    """Checkpoint counts by status, the usual statuses first: ["13 ready", "1 processing", ...]."""
    order = ("ready", "processing", "pending", "failed")
    return ([f"{counts[k]} {k}" for k in order if counts.get(k)]
            + [f"{v} {k}" for k, v in counts.items() if k not in order])


def _escaped(value: Any) -> Any:
    """Autoescape with the standard library's entities (`html.escape`, quotes included)."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


ENVIRONMENT = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("html")),
    autoescape=True,
    undefined=StrictUndefined,
    finalize=_escaped,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.filters.update(fmt=fmt, run_path=run_path, by_severity=sorted_findings, exact=repr,
                           count_parts=count_parts)
ENVIRONMENT.globals.update(risk_class=risk_class)


def page(template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    """`template` rendered with `context`, with the headers every page sends."""
    document = ENVIRONMENT.get_template(template).render(**context)
    return HTMLResponse(document, status_code=status_code, headers={
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    })
