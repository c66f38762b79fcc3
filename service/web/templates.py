"""Small HTML builders: escaping, number formatting, the page shell. No template engine.

Everything that came from a user or the database goes through `esc` (or `num`, which formats a
number). Numbers shown on a page also carry their exact value in `data-value`, so that a test
(or a script) can compare them with the API's JSON without parsing the rounded text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from urllib.parse import quote

from fastapi.responses import HTMLResponse

# Pages are self-contained: inline CSS and SVG (matplotlib embeds rasters as data: URIs), no
# scripts, nothing fetched from anywhere else. The policy makes any slip visible in the browser.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}

CSS = """
:root { --fg:#1d2330; --muted:#5d6675; --line:#dde1e8; --bg:#f5f6f8; --card:#fff;
        --high:#b42318; --high-bg:#fdecea; --mid:#a15c00; --mid-bg:#fff4e0; --low:#1a7f37; --low-bg:#e7f6ec;
        --na:#5d6675; --na-bg:#eef0f3; --link:#1f5fbf; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:10px 24px; display:flex; gap:16px; align-items:baseline; }
header a { color:#fff; text-decoration:none; font-weight:600; }
header .crumb { color:#c7ccd6; }
main { max-width:1360px; margin:0 auto; padding:16px 24px 40px; }
h1 { font-size:22px; margin:4px 0 2px; word-break:break-all; }
h2 { font-size:16px; margin:22px 0 8px; }
h3 { font-size:14px; margin:0 0 6px; }
a { color:var(--link); }
.sub { color:var(--muted); margin-bottom:12px; }
.cards { display:grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .big { font-size:30px; font-weight:650; line-height:1.2; margin:2px 0; }
.card .note { color:var(--muted); font-size:13px; }
.risk-high { color:var(--high); } .risk-mid { color:var(--mid); } .risk-low { color:var(--low); }
.risk-na { color:var(--na); }
.card.risk-high { border-left:5px solid var(--high); } .card.risk-mid { border-left:5px solid var(--mid); }
.card.risk-low { border-left:5px solid var(--low); } .card.risk-na { border-left:5px solid var(--na); }
.pill { display:inline-block; white-space:nowrap; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.pill.risk-high, .sev-critical { background:var(--high-bg); color:var(--high); }
.pill.risk-mid, .sev-warning { background:var(--mid-bg); color:var(--mid); }
.pill.risk-low, .sev-info { background:var(--na-bg); color:var(--na); }
.pill.risk-na { background:var(--na-bg); color:var(--na); }
ul.findings { list-style:none; margin:0; padding:0; }
ul.findings li { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:7px 10px;
                 margin-bottom:6px; display:flex; gap:10px; align-items:baseline; }
ul.findings.compact li { background:none; border:0; padding:1px 0; margin:0; }
ul.findings .code { color:var(--muted); font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size:12px; }
.plots { display:grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap:12px; }
.plot { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 12px; min-width:0; }
.plot.wide { grid-column: 1 / -1; }
.plot svg { width:100%; height:auto; display:block; }
.plot .empty { color:var(--muted); font-style:italic; margin:8px 0; }
.plot .caption { color:var(--muted); font-size:12px; margin-top:4px; }
table { border-collapse:collapse; background:var(--card); width:100%; border:1px solid var(--line); }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef0f3; font-weight:600; font-size:13px; }
td.n, th.n { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
.muted { color:var(--muted); }
.nowrap { white-space:nowrap; }
.small { font-size:12px; }
footer { color:var(--muted); font-size:12px; margin-top:28px; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size:12px; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def run_path(name: str) -> str:
    """Link to a run's page; run names may hold '/', '+', '@', ':'."""
    return "/runs/" + quote(name, safe="")


def fmt(value: float | None, *, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def num(value: float | None, *, metric: str, digits: int = 4) -> str:
    """A formatted number that keeps its exact value in `data-value` (empty when missing)."""
    exact = "" if value is None else repr(value)
    return f'<span class="num" data-metric="{esc(metric)}" data-value="{esc(exact)}">{fmt(value, digits=digits)}</span>'


def risk_class(value: float | None, *, applicable: bool, threshold: float) -> str:
    if not applicable or value is None:
        return "risk-na"
    if value >= threshold:
        return "risk-high"
    if value >= threshold / 2:
        return "risk-mid"
    return "risk-low"


def sorted_findings(findings: Iterable[dict]) -> list[dict]:
    return sorted(findings, key=lambda f: SEVERITY_RANK.get(str(f.get("severity")), 3))


def findings_list(findings: list[dict], *, limit: int | None = None, compact: bool = False) -> str:
    items = sorted_findings(findings)[:limit]
    rows = []
    for f in items:
        severity = str(f.get("severity", "info"))
        step = f.get("step")
        shown = fmt(step) if isinstance(step, int) else esc(step)
        where = f' <span class="muted small">step {shown}</span>' if step is not None else ""
        rows.append(
            f'<li><span class="pill sev-{esc(severity)}">{esc(severity)}</span>'
            f'<span>{esc(f.get("message", ""))}{where} <span class="code">{esc(f.get("code", ""))}</span></span></li>'
        )
    return f'<ul class="findings{" compact" if compact else ""}">{"".join(rows)}</ul>'


def table(headers: list[tuple[str, str]], rows: list[list[tuple[str, str]]], *, css_id: str = "") -> str:
    """`headers`/cells are (html, css class) pairs; cell html must already be escaped."""
    head = "".join(f'<th class="{cls}">{text}</th>' for text, cls in headers)
    body = "".join("<tr>" + "".join(f'<td class="{cls}">{text}</td>' for text, cls in row) + "</tr>"
                   for row in rows)
    attr = f' id="{esc(css_id)}"' if css_id else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, *, crumb: str = "", status_code: int = 200) -> HTMLResponse:
    """The shell every page shares. `title` is plain text; `body` and `crumb` are HTML."""
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)} · forgetwatch</title><style>{CSS}</style></head><body>"
        f'<header><a href="/">forgetwatch</a><span class="crumb">{crumb}</span></header>'
        f"<main>{body}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status_code, headers={
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    })
