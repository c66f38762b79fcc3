"""The HTML pages: `GET /` (all runs) and `GET /runs/{name}` (one run).

Read-only. Served without a token only while `settings.pages_are_public` (by default: while the
service listens on a loopback address only); otherwise a read token is needed, as for the API. Every
number comes from the same queries the API uses, so the page and `GET /v1/runs/{run}/status` agree. The
HTML is in `service/web/html/` (Jinja2, autoescaped); this module loads what each page shows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlalchemy.orm import Session

from drift.sequential import DEFAULT_ALPHA
from drift.shift import SIMILARITY_BIN_EDGES
from service import retention, transfer
from service.api.deps import OptionalReader, Principal, Refusal, SessionDep
from service.db import param_drift as param_store
from service.db import previews, queries, response_drift, status
from service.db import stages as stage_store
from service.db.models import Run
from service.entropy_ceiling import entropy_ceiling
from service.errors import NotFound
from service.settings import Settings
from service.web import data, plots, preflight_plot, similarity_plot, stage_plots
from service.web.templates import ENVIRONMENT, page

router = APIRouter(include_in_schema=False)
log = logging.getLogger("forgetwatch")


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def _drawn(section: str, template: str, context: Callable[[], dict[str, Any]]) -> Markup:
    """A section of a page (`template` over what `context()` loads), or a sentence saying it could not
    be shown: a page never answers 500."""
    try:
        return Markup(ENVIRONMENT.get_template(template).render(**context()))
    except Exception as error:  # logged with its traceback; the reader gets the rest
        log.exception("action=page_section_failed section=%s", section)
        failed = ENVIRONMENT.get_template("macros.html").module.failed  # type: ignore[attr-defined]
        return Markup(failed(section, _reason(error)))


def locked(request: Request, reader: Principal | Refusal) -> HTMLResponse | None:
    """None when the pages may be served to this request, else the 401 page."""
    if request.app.state.settings.pages_are_public or not isinstance(reader, Refusal):
        return None
    return page("locked.html", status_code=401, title="Sign-in needed", detail=reader.detail)


# --- the run list ------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep, reader: OptionalReader) -> HTMLResponse:
    if (denied := locked(request, reader)) is not None:
        return denied
    settings = request.app.state.settings
    runs = queries.list_runs(session)

    def rows() -> dict[str, Any]:
        return {"rows": [(run, data.run_status(session, settings=settings, run_ref=str(run.id)))
                         for run in runs][::-1]}

    run_list = _drawn("run list", "run_list.html", rows) if runs else ""
    methods = sorted({run.method for run in runs})
    return page("index.html", title="Runs", runs=runs, alarm=settings.forecast_alarm_probability,
                run_list=run_list, methods=methods)


# --- one run -----------------------------------------------------------------------------------

@router.get("/runs/{name:path}", response_class=HTMLResponse)
def run_page(name: str, request: Request, session: SessionDep, reader: OptionalReader) -> HTMLResponse:
    if (denied := locked(request, reader)) is not None:
        return denied
    try:
        run = queries.get_run(session, ref=name)
    except NotFound:
        return page("not_found.html", status_code=404, title="Run not found", name=repr(name))
    view = _RunView(session, run, request.app.state.settings)
    return page("run.html", title=run.name, run=run, sections=view.sections())


class _RunView:
    """Loads everything one run page shows, once; each section is drawn on its own."""

    def __init__(self, session: Session, run: Run, settings: Settings) -> None:
        self.run = run
        self.session = session
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
        self.stages = stage_store.run_stages(session, run_id=run.id)
        self.marks = [(stage.name, stage.start_step) for stage in self.stages]

    def sections(self) -> list[Markup]:
        common = {"run": self.run, "status": self.status}
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return [
            _drawn("header", "run/header.html", lambda: common),
            _drawn("cards", "run/cards.html", lambda: {**common, "alarm": self.settings.forecast_alarm_probability,
                                                        "trends": self._trends(), "acceleration": self._acceleration()}),
            _drawn("findings", "run/findings.html", lambda: common),
            *([_drawn("stages", "run/stages.html", self._stages)] if self.stages else []),
            _drawn("entropy ceiling", "run/ceiling.html", lambda: {"ceiling": self._ceiling()}),
            _drawn("plots", "run/plots.html", lambda: {"plots": self._plots()}),
            _drawn("latest", "run/latest.html", lambda: {"rows": self._latest()}),
            _drawn("footer", "run/footer.html", lambda: {**common, "now": now}),
        ]

    def _stages(self) -> dict[str, Any]:
        """The stage table, the transfer matrix of each metric as a heat map, and each stage's
        pre-flight forecast as its curve."""
        report = transfer.transfer_report(self.session, run_id=self.run.id)
        domains = stage_store.probe_set_domains(self.session, run_id=self.run.id)
        rows = report["rows"]
        stages = [{"name": s.name, "position": s.position, "start_step": s.start_step,
                   "end_step": rows[s.position]["end_step"], "probe_sets": s.probe_sets,
                   "retention_sets": retention.retention_sets(self.stages, domains, s.position),
                   "checkpoint_step": rows[s.position]["checkpoint_step"]} for s in self.stages]
        heatmaps = [{"metric": metric, "svg": Markup(svg) if (svg := stage_plots.transfer_heatmap(
                        rows, metric, found)) is not None else None,
                     "empty": f"No {stage_plots.METRIC_TITLES[metric]} measured on the stages' probe sets yet."}
                    for metric, found in report["metrics"].items()]
        forecasts = [{"stage": name, "note": found["note"], "svg": Markup(svg) if (
                          svg := preflight_plot.forgetting_curve(found)) is not None else None}
                     for name, found in previews.run_forecasts(self.session, run_id=self.run.id).items()]
        return {"stages": stages, "heatmaps": heatmaps, "forecasts": forecasts}

    def _ceiling(self) -> dict[str, Any]:
        return dataclasses.asdict(entropy_ceiling(self.session, run_id=self.run.id, probe_rows=self.probe_rows))

    def _trends(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, (title, _) in plots.FORECAST_LABELS.items():
            f = self.forecasts.get(name)
            if isinstance(f, dict):
                steps = f.get("steps_to_threshold")
                out.append((title, {"threshold": f.get("threshold"), "crossed": f.get("crossed"),
                                    "steps": round(steps) if steps is not None else None}))
        return out

    def _acceleration(self) -> float | None:
        accel = self.forecasts.get("acceleration_ratio")
        return float(accel) if isinstance(accel, (int, float)) else None

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

    def _plots(self) -> list[dict[str, Any]]:
        s = self.settings
        wide_forgetting = len(plots.forgetting_panels(self.probe_rows, self.labels)) > 1
        figures: list[tuple[str, str, Callable[[], str | None], str]] = [
            ("risk", "", lambda: plots.risk(self.risk_rows, threshold=s.forecast_alarm_probability, stages=self.marks),
             "No assessments yet: detection and forecast are computed once a checkpoint's analyses finish."),
            ("forecasts", "", lambda: plots.forecasts(self.forecasts, observed=self._observed()),
             "No forecasts yet: trends need three or more assessed checkpoints."),
            ("param-drift", "", lambda: plots.param_drift(
                self.global_rows, threshold=self._threshold("param_drift", s.forecast_param_rel_l2), stages=self.marks),
             "No parameter drift yet: it appears when the first checkpoint's parameter analysis finishes."),
            ("block-heatmap", "", lambda: plots.block_heatmap(self.block_rows), "No per-block drift yet."),
            ("probe-kl", "", lambda: plots.probe_kl(self.probe_rows, stages=self.marks,
                                            threshold=self._threshold("ood_kl", s.forecast_ood_kl_nats)),
             "No probe results yet: attach probe sets to the run to measure KL against the base."),
            ("diversity", "", lambda: plots.diversity(self.sample_rows, stages=self.marks),
             f"No sample diversity yet: push generated samples with POST /v1/runs/{self.run.id}/samples."),
            ("similarity", "", lambda: similarity_plot.similarity(self.sample_rows, edges=SIMILARITY_BIN_EDGES),
             "No per-prompt similarity yet: it needs pushed samples and a base model the service can read."),
            ("forgetting", "wide" if wide_forgetting else "", lambda: plots.forgetting(self.probe_rows, self.labels,
                                                                                  stages=self.marks),
             "No measured forgetting yet: needs probe sets with answers or references."),
        ]
        cells = []
        for key, width, draw, empty in figures:
            try:
                svg = draw()
            except Exception as error:  # one odd series must not take the page down
                log.exception("action=plot_failed plot=%s run=%s", key, self.run.id)
                svg, empty = None, f"This plot could not be drawn from the stored data ({_reason(error)})."
            # matplotlib's own SVG: drawn here from numbers, text in it escaped by matplotlib
            cells.append({"key": key, "width": width, "svg": Markup(svg) if svg is not None else None,
                          "empty": empty})
        return cells

    def _latest(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []

        def add(label: str, step: Any, value: Any, metric: str | None) -> None:
            rows.append({"label": label, "step": step, "value": value, "metric": metric})

        forecast = self.status["forecast"]
        if forecast is not None:
            if forecast["applicable"] and forecast["probability"] is not None:
                add("forgetting forecast probability", forecast["step"], forecast["probability"], "forecast")
            else:
                add("forgetting forecast probability", forecast["step"], forecast["reason"] or "", None)
        detection = self.status["detection"]
        if detection is not None and detection.get("measured"):
            add("ood relative drop, interval lower bound", detection["step"], detection["drop_low"],
                "detection.drop_low")
        if self.global_rows:
            g = self.global_rows[-1]
            add("global relative L2 distance", g["step"], g["relative_l2_distance"],
                "param.global.relative_l2_distance")
            if g["normalized_spectral_shift"] is not None:
                add("global normalized spectral shift", g["step"], g["normalized_spectral_shift"],
                    "param.global.normalized_spectral_shift")
            if g["cosine_similarity"] is not None:
                add("global cosine similarity", g["step"], g["cosine_similarity"], "param.global.cosine_similarity")
            blocks = [r for r in self.block_rows if r["step"] == g["step"] and r["relative_l2_distance"] is not None]
            if blocks:
                top = max(blocks, key=lambda r: r["relative_l2_distance"])
                add(f"most drifted block ({top['key']}), relative L2", top["step"], top["relative_l2_distance"],
                    "param.max_block.relative_l2_distance")
        latest_probe: dict[str, dict[str, Any]] = {}
        for r in self.probe_rows:
            latest_probe[r["probe_set"]] = r
        for probe_set, r in sorted(latest_probe.items(), key=lambda kv: (kv[1]["domain"] != "ood", kv[0])):
            where = f"{probe_set} ({'ood' if r['domain'] == 'ood' else 'in-domain'})"
            metric = f"probe.{probe_set}"
            add(f"{where}: KL(base ‖ ckpt), nats/token", r["step"], r["kl_forward"], f"{metric}.kl_forward")
            if r["accuracy_change"] is not None:
                add(f"{where}: accuracy change vs base", r["step"], r["accuracy_change"], f"{metric}.accuracy_change")
            if r["loglik_change"] is not None:
                add(f"{where}: log-likelihood change, nats/token", r["step"], r["loglik_change"],
                    f"{metric}.loglik_change")
        if self.sample_rows:
            step = self.sample_rows[-1]["step"]
            at = [r for r in self.sample_rows if r["step"] == step]
            for key, label in (("distinct2", "distinct-2"), ("distinct2_base", "distinct-2 of the base model"),
                               ("repetition_ratio", "repetition ratio")):
                _, values = data.mean_by_step(at, key)
                if values:
                    add(f"samples: {label}", step, values[0], f"samples.{key}")
            evidence = [r["shift_evalue_max"] for r in at if r["shift_evalue_max"] is not None]
            if evidence:
                add(f"samples: sequential shift e-value, largest so far (alarm at {1 / DEFAULT_ALPHA:.0f})", step,
                    max(evidence), "samples.shift_evalue_max")
        for name, points in sorted(self.labels.items()):
            step, value = points[-1]
            add(f"label {name} (trainer)", step, value, f"label.{name}")
        return rows
