"""The HTML pages: `GET /` (all runs) and `GET /runs/{name}` (one run).

Read-only. Served without a token only while `settings.pages_are_public` (by default: while the
service listens on a loopback address only); otherwise a read token is needed, as for the API. Every number
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

from service.api.deps import OptionalReader, Principal, Refusal, SessionDep
from service.db import param_drift as param_store
from service.db import queries, response_drift, status
from service.db.models import Run
from service.errors import NotFound
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


def _locked(request: Request, reader: Principal | Refusal) -> HTMLResponse | None:
    """None when the pages may be served to this request, else the 401 page."""
    if request.app.state.settings.pages_are_public or not isinstance(reader, Refusal):
        return None
    body = (f"<h1>Sign-in needed</h1><p>{esc(reader.detail)}</p>"
            "<p>The pages are served without a token on a loopback address, or anywhere with "
            "<code>FORGETWATCH_PUBLIC_PAGES=true</code>.</p>")
    return page("Sign-in needed", body, status_code=401)


# --- the run list ------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep, reader: OptionalReader) -> HTMLResponse:
    if (denied := _locked(request, reader)) is not None:
        return denied
    settings = request.app.state.settings
    runs = queries.list_runs(session)
    if not runs:
        body = ("<h1>Runs</h1><p class='muted'>No runs yet. Register one with <code>POST /v1/runs</code> "
                "(or the trainer callback); it shows up here with its first checkpoint.</p>")
        return page("Runs", body)
    headers = [("Run", ""), ("Method", ""), ("Last step", "n"), ("Checkpoints", ""), ("OOD forgetting", ""),
               ("Last safe step", "n"), ("Top findings", "")]

    def runs_table() -> str:
        rows = [_index_row(run, data.run_status(session, settings=settings, run_ref=str(run.id))) for run in runs]
        return table(headers, rows[::-1], css_id="runs")

    body = (f"<h1>Runs</h1><div class='sub'>{len(runs)} run{'s' if len(runs) != 1 else ''} · forecast alarm at "
            f"{fmt(settings.forecast_alarm_probability)} · newest first</div>" + _drawn("run list", runs_table))
    return page("Runs", body)


def _index_row(run: Run, status: dict[str, Any]) -> list[tuple[str, str]]:
    name = f'<a href="{esc(run_path(run.name))}" data-run="{esc(run.name)}">{esc(run.name)}</a>'
    findings = status["findings"]
    top = findings_list(findings, limit=3, compact=True) if findings else "<span class='muted'>none</span>"
    if len(findings) > 3:
        top += f"<div class='muted small'>+{len(findings) - 3} more</div>"
    safe = status["last_safe_step"]
    return [(name, ""), (esc(run.method), ""), (fmt(status["last_step"]), "n"),
            (_counts(status["checkpoints"]), "nowrap"), (_forgetting_pill(status), "nowrap"),
            (fmt(safe) if safe is not None else "<span class='muted'>—</span>", "n"), (top, "")]


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "<span class='muted'>none yet</span>"
    order = ("ready", "processing", "pending", "failed")
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    parts += [f"{v} {esc(k)}" for k, v in counts.items() if k not in order]
    text = " · ".join(parts)
    return f"<span class='risk-high'>{text}</span>" if counts.get("failed") else text


def _forgetting_pill(status: dict[str, Any]) -> str:
    """Detected (a fact) before predicted (a forecast); the forecast's reason when it abstains."""
    detection, forecast = status["detection"], status["forecast"]
    if forecast is None:
        return "<span class='pill risk-na'>not assessed yet</span>"
    step = f"<span class='muted small'>step {fmt(forecast['step'])}</span>"
    if detection and detection.get("detected"):
        return f"<span class='pill risk-high'>detected</span> {step}"
    if not forecast["applicable"] or forecast["probability"] is None:
        reason = esc(forecast["reason"] or "not applicable")
        return f"<span class='pill risk-na'>n/a</span> <span class='muted small'>{reason}</span>"
    css = risk_class(forecast["probability"], applicable=True, threshold=forecast["threshold"])
    label = "predicted " if forecast["predicted"] else "forecast "
    return (f"<span class='pill {css}'>{label}{num(forecast['probability'], metric='forecast', digits=2)}</span> "
            f"{step}")


# --- one run -----------------------------------------------------------------------------------

@router.get("/runs/{name:path}", response_class=HTMLResponse)
def run_page(name: str, request: Request, session: SessionDep, reader: OptionalReader) -> HTMLResponse:
    if (denied := _locked(request, reader)) is not None:
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
        self.forecasts: dict[str, Any] = self.status["trends"] or {}

    def render(self) -> str:
        parts = (self._header, self._cards, self._findings, self._plots, self._latest, self._footer)
        return "".join(_drawn(part.__name__.strip("_"), part) for part in parts)

    def _header(self) -> str:
        run, status = self.run, self.status
        facts = [f"method <b>{esc(run.method)}</b>", f"base <code>{esc(run.base_model)}</code>",
                 f"last step <b>{fmt(status['last_step'])}</b>", f"checkpoints: {_counts(status['checkpoints'])}"]
        return f"<h1 data-run='{esc(run.name)}'>{esc(run.name)}</h1><div class='sub'>{' · '.join(facts)}</div>"

    def _cards(self) -> str:
        cards = (self._detection_card(), self._prediction_card(), self._rollback_card(), self._forecast_card())
        return f"<div class='cards'>{''.join(cards)}</div>"

    def _detection_card(self) -> str:
        d = self.status["detection"]
        label = "OOD forgetting detected?"
        if d is None:
            css, value, note = "risk-na", "—", "not assessed yet: computed after each checkpoint's analyses"
        elif not d.get("measured"):
            css, value, note = "risk-na", "n/a", esc(d.get("reason") or "not measured")
            label += f" · step {fmt(d['step'])}"
        else:
            css, value = ("risk-high", "detected") if d["detected"] else ("risk-low", "no")
            note = (f"{esc(d['metric'])} on <code>{esc(d['probe_set'])}</code>: relative drop "
                    f"{fmt(d['drop'], digits=3)} (95% interval {fmt(d['drop_low'], digits=3)} to "
                    f"{fmt(d['drop_high'], digits=3)}), threshold {fmt(d['threshold'])}")
            if d.get("first_detected_step") is not None:
                note += f" · first detected at step {fmt(d['first_detected_step'])}"
            label += f" · step {fmt(d['step'])}"
        return (f"<div class='card {css}' id='detection-card'><div class='label'>{label}</div>"
                f"<div class='big {css}'>{value}</div><div class='note'>{note}</div></div>")

    def _prediction_card(self) -> str:
        f = self.status["forecast"]
        threshold = self.settings.forecast_alarm_probability
        label = "Forgetting forecast"
        if f is None:
            css, value, note = "risk-na", "—", "not assessed yet: computed after each checkpoint's analyses"
        elif not f["applicable"] or f["probability"] is None:
            css, value = "risk-na", "n/a"
            note = f"not applicable: {esc(f['reason'] or 'no reason recorded')}"
            label += f" · step {fmt(f['step'])}"
        else:
            css = risk_class(f["probability"], applicable=True, threshold=threshold)
            value = num(f["probability"], metric="forecast", digits=2)
            verdict = "predicted: at or above" if f["predicted"] else "below"
            note = (f"P(detected within {f['horizon_checkpoints']} checkpoints) · {verdict} the alarm threshold "
                    f"{fmt(threshold)} · model <code>{esc(f['model'])}</code> on {f['n_points']} checkpoints")
            if f.get("checkpoints_to_crossing") is not None:
                note += f" · trend crosses in ~{fmt(f['checkpoints_to_crossing'], digits=2)} checkpoints"
            label += f" · step {fmt(f['step'])}"
        heuristic = self.status["parameter_heuristic"] or {}
        if heuristic.get("value") is not None:
            note += (f"<div class='muted small'>{esc(heuristic['label'])}: "
                     f"{num(heuristic['value'], metric='heuristic', digits=2)}</div>")
        return (f"<div class='card {css}' id='risk-card'><div class='label'>{label}</div>"
                f"<div class='big {css}'>{value}</div><div class='note'>{note}</div></div>")

    def _rollback_card(self) -> str:
        safe = self.status["last_safe_step"]
        if safe is None:
            safe_big = "none"
            safe_note = ("no checkpoint assessed yet" if self.status["forecast"] is None
                         else "no assessed checkpoint came before the first alarm")
        else:
            safe_big = num(safe, metric="last_safe_step")
            last = self.status["last_step"]
            safe_note = ("the latest checkpoint: nothing to roll back" if safe == last else
                         "last checkpoint before forgetting was predicted or detected; roll back here")
        return (f"<div class='card' id='rollback-card'><div class='label'>Last safe step (rollback point)"
                f"</div><div class='big'>{safe_big}</div><div class='note'>{safe_note}</div></div>")

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
        return (f"<div class='card' id='forecast-card'><div class='label'>Trends of raw series (Theil–Sen, "
                f"informational)</div>{content}</div>")

    def _findings(self) -> str:
        findings = self.status["findings"]
        forecast = self.status["forecast"]
        where = f" at step {fmt(forecast['step'])}" if forecast else ""
        if not findings:
            return f"<h2>Findings{where}</h2><p class='muted'>No findings at the latest assessed checkpoint.</p>"
        return f"<h2>Findings{where}</h2>{findings_list(findings)}"

    def _observed(self) -> dict[str, tuple[list[int], list[float]]]:
        rel = [(r["step"], r["relative_l2_distance"]) for r in self.global_rows if r["relative_l2_distance"] is not None]
        return {
            "ood_kl": data.mean_by_step(self.probe_rows, "kl_forward", where={"domain": "ood"}),
            "param_drift": ([s for s, _ in rel], [float(v) for _, v in rel]),
            "diversity": data.mean_by_step(self.sample_rows, "distinct2"),
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
            ("risk", "", lambda: plots.risk(self.risk_rows, threshold=s.forecast_alarm_probability),
             "No assessments yet: detection and forecast are computed once a checkpoint's analyses finish."),
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

        forecast = self.status["forecast"]
        if forecast is not None:
            shown = (num(forecast["probability"], metric="forecast")
                     if forecast["applicable"] and forecast["probability"] is not None
                     else f"n/a <span class='muted small'>{esc(forecast['reason'] or '')}</span>")
            add("forgetting forecast probability", forecast["step"], shown)
        detection = self.status["detection"]
        if detection is not None and detection.get("measured"):
            add("ood relative drop, interval lower bound", detection["step"],
                num(detection["drop_low"], metric="detection.drop_low"))
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
