"""The HTML pages: `GET /` (all runs) and `GET /runs/{name}` (one run).

Read-only. Served without a token only while `settings.public_pages` allows it (the default for
the embedded, single-user setup); otherwise a read token is needed, as for the API. Every number
comes from the same queries the API uses, so the page and `GET /v1/runs/{run}/status` agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, authenticate
from service.db import param_drift as param_store
from service.db import queries, response_drift, status
from service.db.models import Run
from service.errors import NotFound, Unauthorized
from service.settings import Settings
from service.web import data, plots
from service.web.templates import esc, findings_list, fmt, num, page, risk_class, run_path, table

router = APIRouter(include_in_schema=False)
log = logging.getLogger("forgetwatch")


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def _drawn(section: str, part: Callable[[], str]) -> str:
    """A section of a page, or a sentence saying it could not be shown: a page never answers 500."""
    try:
        return part()
    except Exception as error:  # logged with its traceback; the reader gets the rest
        log.exception("action=page_section_failed section=%s", section)
        return (f"<p class='empty' data-failed='{esc(section)}'>The {esc(section)} section could not be shown "
                f"from the stored data ({esc(_reason(error))}). The JSON API has the raw numbers.</p>")


def _locked(request: Request) -> HTMLResponse | None:
    """None when the pages may be served to this request, else the 401 page."""
    if getattr(request.app.state.settings, "public_pages", True):
        return None
    try:
        with request.app.state.sessions() as session:
            authenticate(session, request.headers.get("authorization"))
    except Unauthorized as error:
        body = (f"<h1>Sign-in needed</h1><p>{esc(error.detail)}</p>"
                "<p>The pages are served without a token only when <code>FORGETWATCH_PUBLIC_PAGES=true</code>.</p>")
        return page("Sign-in needed", body, status_code=401)
    return None


# --- the run list ------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep) -> HTMLResponse:
    if (denied := _locked(request)) is not None:
        return denied
    settings = request.app.state.settings
    runs = queries.list_runs(session)
    if not runs:
        body = ("<h1>Runs</h1><p class='muted'>No runs yet. Register one with <code>POST /v1/runs</code> "
                "(or the trainer callback); it shows up here with its first checkpoint.</p>")
        return page("Runs", body)
    headers = [("Run", ""), ("Method", ""), ("Last step", "n"), ("Checkpoints", ""), ("Collapse risk", ""),
               ("Last safe step", "n"), ("Top findings", "")]

    def runs_table() -> str:
        rows = [_index_row(run, data.run_status(session, settings=settings, run_ref=str(run.id))) for run in runs]
        return table(headers, rows[::-1], css_id="runs")

    body = (f"<h1>Runs</h1><div class='sub'>{len(runs)} run{'s' if len(runs) != 1 else ''} · alert threshold "
            f"{fmt(settings.risk_threshold)} · newest first</div>" + _drawn("run list", runs_table))
    return page("Runs", body)


def _index_row(run: Run, status: dict[str, Any]) -> list[tuple[str, str]]:
    name = f'<a href="{esc(run_path(run.name))}" data-run="{esc(run.name)}">{esc(run.name)}</a>'
    findings = status["findings"]
    top = findings_list(findings, limit=3, compact=True) if findings else "<span class='muted'>none</span>"
    if len(findings) > 3:
        top += f"<div class='muted small'>+{len(findings) - 3} more</div>"
    safe = status["last_safe_step"]
    return [(name, ""), (esc(run.method), ""), (fmt(status["last_step"]), "n"),
            (_counts(status["checkpoints"]), "nowrap"), (_risk_pill(status), "nowrap"),
            (fmt(safe) if safe is not None else "<span class='muted'>—</span>", "n"), (top, "")]


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "<span class='muted'>none yet</span>"
    order = ("ready", "processing", "pending", "failed")
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    parts += [f"{v} {esc(k)}" for k, v in counts.items() if k not in order]
    text = " · ".join(parts)
    return f"<span class='risk-high'>{text}</span>" if counts.get("failed") else text


def _risk_pill(status: dict[str, Any]) -> str:
    risk = status["risk"]
    if risk is None:
        return "<span class='pill risk-na'>not assessed yet</span>"
    if not risk["applicable"] or risk["value"] is None:
        reason = esc(risk["reason"] or "no risk model applies")
        return f"<span class='pill risk-na'>n/a</span> <span class='muted small'>{reason}</span>"
    css = risk_class(risk["value"], applicable=True, threshold=risk["threshold"])
    return (f"<span class='pill {css}'>{num(risk['value'], metric='risk', digits=2)}</span> "
            f"<span class='muted small'>step {fmt(risk['step'])}</span>")


# --- one run -----------------------------------------------------------------------------------

@router.get("/runs/{name:path}", response_class=HTMLResponse)
def run_page(name: str, request: Request, session: SessionDep) -> HTMLResponse:
    if (denied := _locked(request)) is not None:
        return denied
    try:
        run = queries.get_run(session, ref=name)
    except NotFound:
        body = (f"<h1>No run {esc(repr(name))}</h1><p><a href='/'>All runs</a> lists the runs this "
                "service knows. A run appears once the trainer registers it (<code>POST /v1/runs</code>).</p>")
        return page("Run not found", body, status_code=404)
    settings = request.app.state.settings
    view = _RunView(session, run, settings)
    crumb = f"› <a href='/'>runs</a> › {esc(run.name)}"
    return page(run.name, view.render(), crumb=crumb)


class _RunView:
    """Loads everything one run page shows, once, then renders it."""

    def __init__(self, session: Session, run: Run, settings: Settings) -> None:
        self.run = run
        self.settings = settings
        self.status = data.run_status(session, settings=settings, run_ref=str(run.id))
        series = param_store.run_series(session, run_id=run.id)
        self.global_rows = [r for r in series if r["scope"] == "global"]
        self.block_rows = [r for r in series if r["scope"] == "block"]
        self.probe_rows = response_drift.run_probe_series(session, run_id=run.id)
        self.sample_rows = response_drift.run_sample_series(session, run_id=run.id)
        self.risk_rows = status.risk_series(session, run_id=run.id)
        self.labels = data.label_series(session, run_id=run.id)
        risk = self.status["risk"] or {}
        self.forecasts: dict[str, Any] = risk.get("forecasts") or {}

    def render(self) -> str:
        parts = (self._header, self._cards, self._findings, self._plots, self._latest, self._footer)
        return "".join(_drawn(part.__name__.strip("_"), part) for part in parts)

    def _header(self) -> str:
        run, status = self.run, self.status
        facts = [f"method <b>{esc(run.method)}</b>", f"base <code>{esc(run.base_model)}</code>",
                 f"last step <b>{fmt(status['last_step'])}</b>", f"checkpoints: {_counts(status['checkpoints'])}"]
        return f"<h1 data-run='{esc(run.name)}'>{esc(run.name)}</h1><div class='sub'>{' · '.join(facts)}</div>"

    def _cards(self) -> str:
        risk = self.status["risk"]
        threshold = self.settings.risk_threshold
        if risk is None:
            css, value, note = "risk-na", "—", "not assessed yet: risk is computed after each checkpoint's analyses"
            label = "Collapse risk"
        elif not risk["applicable"] or risk["value"] is None:
            css, value = "risk-na", "n/a"
            note = esc(risk["reason"] or "no risk model applies")
            label = f"Collapse risk · step {fmt(risk['step'])}"
        else:
            css = risk_class(risk["value"], applicable=True, threshold=threshold)
            value = num(risk["value"], metric="risk", digits=2)
            verdict = "at or above" if risk["value"] >= threshold else "below"
            note = f"{verdict} the alert threshold {fmt(threshold)} · model <code>{esc(risk['model'])}</code>"
            if risk["changepoint"]:
                note += " · <b>change point</b> in ood KL"
            label = f"Collapse risk · step {fmt(risk['step'])}"
        risk_card = (f"<div class='card {css}' id='risk-card'><div class='label'>{label}</div>"
                     f"<div class='big {css}'>{value}</div><div class='note'>{note}</div></div>")
        safe = self.status["last_safe_step"]
        if safe is None:
            safe_big = "none"
            safe_note = ("no checkpoint assessed yet" if risk is None
                         else f"no assessed checkpoint has risk below {fmt(threshold)}")
        else:
            safe_big = num(safe, metric="last_safe_step")
            last = self.status["last_step"]
            safe_note = ("the latest checkpoint: nothing to roll back" if safe == last else
                         f"last checkpoint before risk reached {fmt(threshold)}; roll back here")
        safe_card = (f"<div class='card' id='rollback-card'><div class='label'>Last safe step (rollback point)"
                     f"</div><div class='big'>{safe_big}</div><div class='note'>{safe_note}</div></div>")
        return f"<div class='cards'>{risk_card}{safe_card}{self._forecast_card()}</div>"

    def _forecast_card(self) -> str:
        lines = []
        for name, (title, _) in plots.FORECAST_LABELS.items():
            f = self.forecasts.get(name)
            if not isinstance(f, dict):
                continue
            if f.get("crossed"):
                text = "<b class='risk-high'>at threshold</b>"
            elif f.get("steps_to_threshold") is not None:
                text = f"threshold in <b>~{fmt(round(f['steps_to_threshold']))}</b> steps"
            else:
                text = "<span class='muted'>not heading to threshold</span>"
            lines.append(f"<div>{esc(title)} → {fmt(f.get('threshold'))}: {text}</div>")
        accel = self.forecasts.get("acceleration_ratio")
        if isinstance(accel, (int, float)):
            lines.append(f"<div class='muted'>parameter drift acceleration ×{fmt(float(accel), digits=2)}</div>")
        content = "".join(lines) or "<div class='note'>no forecasts yet (need 3+ assessed checkpoints)</div>"
        return f"<div class='card' id='forecast-card'><div class='label'>Forecasts (Theil–Sen trend)</div>{content}</div>"

    def _findings(self) -> str:
        findings = self.status["findings"]
        risk = self.status["risk"]
        where = f" at step {fmt(risk['step'])}" if risk else ""
        if not findings:
            return f"<h2>Findings{where}</h2><p class='muted'>No findings at the latest assessed checkpoint.</p>"
        return f"<h2>Findings{where}</h2>{findings_list(findings)}"

    def _observed(self) -> dict[str, tuple[list[int], list[float]]]:
        rel = [(r["step"], r["relative_l2_distance"]) for r in self.global_rows if r["relative_l2_distance"] is not None]
        return {
            "ood_kl": data.mean_by_step(self.probe_rows, "kl_forward", where={"domain": "ood"}),
            "param_drift": ([s for s, _ in rel], [float(v) for _, v in rel]),
            "diversity": data.mean_by_step(self.sample_rows, "distinct2"),
            "ood_forgetting": data.mean_by_step(self.probe_rows, "accuracy_change", where={"domain": "ood"}),
        }

    def _threshold(self, name: str, default: float) -> float:
        forecast = self.forecasts.get(name)
        if isinstance(forecast, dict) and forecast.get("threshold") is not None:
            return float(forecast["threshold"])
        return default

    def _plots(self) -> str:
        s = self.settings
        run = esc(str(self.run.id))
        wide_forgetting = len(plots.forgetting_panels(self.probe_rows, self.labels)) > 1
        figures = [
            ("risk", "", lambda: plots.risk(self.risk_rows, threshold=s.risk_threshold),
             "No risk estimates yet: risk is computed once a checkpoint's analyses finish."),
            ("forecasts", "", lambda: plots.forecasts(self.forecasts, observed=self._observed()),
             "No forecasts yet: trends need three or more assessed checkpoints."),
            ("param-drift", "", lambda: plots.param_drift(
                self.global_rows, threshold=self._threshold("param_drift", s.forecast_param_rel_l2)),
             "No parameter drift yet: it appears when the first checkpoint's parameter analysis finishes."),
            ("block-heatmap", "", lambda: plots.block_heatmap(self.block_rows), "No per-block drift yet."),
            ("probe-kl", "", lambda: plots.probe_kl(self.probe_rows,
                                            threshold=self._threshold("ood_kl", s.forecast_ood_kl_nats)),
             "No probe results yet: attach probe sets to the run to measure KL against the base."),
            ("diversity", "", lambda: plots.diversity(self.sample_rows),
             f"No sample diversity yet: push generated samples with POST /v1/runs/{run}/samples."),
            ("forgetting", "wide" if wide_forgetting else "", lambda: plots.forgetting(self.probe_rows, self.labels),
             "No measured forgetting yet: needs probe sets with answers or references."),
        ]
        cells = []
        for key, width, draw, empty in figures:
            try:
                svg = draw()
            except Exception as error:  # one odd series must not take the page down
                log.exception("action=plot_failed plot=%s run=%s", key, self.run.id)
                svg, empty = None, f"This plot could not be drawn from the stored data ({esc(_reason(error))})."
            inner = svg if svg is not None else f"<p class='empty'>{empty}</p>"
            cells.append(f"<section class='plot {width}' id='plot-{key}' data-empty='{str(svg is None).lower()}'>"
                         f"{inner}</section>")
        return f"<h2>Plots</h2><div class='plots'>{''.join(cells)}</div>"

    def _latest(self) -> str:
        rows: list[list[tuple[str, str]]] = []

        def add(label: str, step: Any, value: str) -> None:
            rows.append([(label, ""), (fmt(step) if step is not None else "—", "n"), (value, "n")])

        risk = self.status["risk"]
        if risk is not None:
            shown = (num(risk["value"], metric="risk") if risk["applicable"] and risk["value"] is not None
                     else f"n/a <span class='muted small'>{esc(risk['reason'] or '')}</span>")
            add("collapse risk", risk["step"], shown)
        if self.global_rows:
            g = self.global_rows[-1]
            add("global relative L2 distance", g["step"],
                num(g["relative_l2_distance"], metric="param.global.relative_l2_distance"))
            if g["normalized_spectral_shift"] is not None:
                add("global normalized spectral shift", g["step"],
                    num(g["normalized_spectral_shift"], metric="param.global.normalized_spectral_shift"))
            if g["cosine_similarity"] is not None:
                add("global cosine similarity", g["step"],
                    num(g["cosine_similarity"], metric="param.global.cosine_similarity"))
            blocks = [r for r in self.block_rows if r["step"] == g["step"] and r["relative_l2_distance"] is not None]
            if blocks:
                top = max(blocks, key=lambda r: r["relative_l2_distance"])
                add(f"most drifted block ({esc(top['key'])}), relative L2", top["step"],
                    num(top["relative_l2_distance"], metric="param.max_block.relative_l2_distance"))
        latest_probe: dict[str, dict[str, Any]] = {}
        for r in self.probe_rows:
            latest_probe[r["probe_set"]] = r
        for probe_set, r in sorted(latest_probe.items(), key=lambda kv: (kv[1]["domain"] != "ood", kv[0])):
            where = f"{esc(probe_set)} ({'ood' if r['domain'] == 'ood' else 'in-domain'})"
            metric = f"probe.{probe_set}"
            add(f"{where}: KL(base ‖ ckpt), nats/token", r["step"], num(r["kl_forward"], metric=f"{metric}.kl_forward"))
            if r["accuracy_change"] is not None:
                add(f"{where}: accuracy change vs base", r["step"],
                    num(r["accuracy_change"], metric=f"{metric}.accuracy_change"))
            if r["loglik_change"] is not None:
                add(f"{where}: log-likelihood change, nats/token", r["step"],
                    num(r["loglik_change"], metric=f"{metric}.loglik_change"))
        if self.sample_rows:
            step = self.sample_rows[-1]["step"]
            at = [r for r in self.sample_rows if r["step"] == step]
            for key, label in (("distinct2", "distinct-2"), ("distinct2_base", "distinct-2 of the base model"),
                               ("repetition_ratio", "repetition ratio")):
                _, values = data.mean_by_step(at, key)
                if values:
                    add(f"samples: {label}", step, num(values[0], metric=f"samples.{key}"))
        for name, points in sorted(self.labels.items()):
            step, value = points[-1]
            add(f"label {esc(name)} (trainer)", step, num(value, metric=f"label.{name}"))
        if not rows:
            return "<h2>Latest numbers</h2><p class='muted'>Nothing measured yet.</p>"
        headers = [("Metric", ""), ("Step", "n"), ("Value", "n")]
        return "<h2>Latest numbers</h2>" + table(headers, rows, css_id="latest")

    def _footer(self) -> str:
        ref = esc(str(self.run.id))
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"<footer>Rendered {now}. The same numbers, as JSON (read token): "
                f"<code>GET /v1/runs/{ref}/status</code>, <code>/v1/runs/{ref}/risk</code>, "
                f"<code>/v1/runs/{ref}/param-drift</code>.</footer>")
