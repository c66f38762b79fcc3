"""`forgetwatch calibrate`: the forecast's alarm threshold (and, from scratch, its model) from labelled runs,
and its held-out record.

A run is usable when the trainer posted its ood ground truth (`POST /v1/runs/{run}/labels`, e.g.
`ood_accuracy`, measured on items that are not probe items) for the base (step 0) and for its
checkpoints. Each run is replayed checkpoint by checkpoint with the service's own functions
(`service.risk.ood_drops`, `drift.replay.replay`), each forecast from the checkpoints up
to it only, so the result does not depend on what the service stored at the time, and scored by the
forecast model (`drift.hazard`, ``hazard/3``): the one in force, which never saw these runs, or with
``--from-scratch`` a model fitted on them, each run scored by a fit without it (leave one run out).
The alarm threshold is conformal on the runs that never forgot (`drift.evaluation.conformal_threshold`),
never below the score a run whose probes have not changed can get (`drift.hazard.no_change_ceiling`),
so such a run never alarms.

The threshold the service uses is replaced only by a refit that is not worse: the user's runs are
pooled with the shipped corpus's non-forgetting runs (`SHIPPED`; shrinkage toward the shipped
threshold), the refit is judged leave-one-run-out on the user's runs next to the threshold in force
on the same runs, and it is installed (written with ``"installed": true``, which `Settings` reads
from the data dir) only when `drift.evaluation.why_worse` finds nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from drift.evaluation import HeldOut, RunTrace, alarm_threshold, held_out, refit, why_worse
from drift.hazard import FittedHazard, HazardModel, Inputs
from drift.hazard_heldout import held_out_alarms, leave_one_out
from drift.replay import RunRecord, replay
from service.database import database_url, ensure_schema
from service.db.features import ood_history, run_history
from service.db.labels import label_values, runs_labelled_at_base
from service.db.queries import last_step
from service.db.response_drift import run_base_scores
from service.db.session import make_engine, make_sessionmaker
from service.risk import ood_drops
from service.settings import SHIPPED_CALIBRATION, Settings

FORMAT = "forgetwatch.alarm_threshold/2"
SERVED: Inputs = "hazard/3"
"""The forecast model the service serves (`drift.hazard.INPUTS`)."""
SHIPPED = SHIPPED_CALIBRATION
"""The project corpus's calibration: its threshold and the largest forecast of each run that never forgot."""


@dataclass(frozen=True)
class Refit:
    threshold: float | None
    installed: bool
    reason: str
    refit: HeldOut
    in_force: HeldOut


def shipped_maxima(path: Path = SHIPPED) -> list[float]:
    document = json.loads(path.read_text())
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} document")
    return [float(v) for v in document["quiet_run_maxima"]]


def refit_threshold(runs: list[RunTrace], *, in_force: float, alpha: float, horizon: int,
                    shipped: list[float], floor: float, current: list[RunTrace] | None = None) -> Refit:
    """The refit (pooled with ``shipped``, never below ``floor``) and whether it may replace the threshold
    ``in_force``. ``current``: the same runs scored by the model in force (default: ``runs``' own scores)."""
    threshold, record, in_force_record = refit(runs, shipped_maxima=shipped, shipped_threshold=in_force,
                                               alpha=alpha, horizon=horizon, floor=floor, in_force_traces=current)
    if threshold is None:
        return Refit(None, False, "too few runs that never forgot to bound false alarms", record, in_force_record)
    worse = why_worse(record, in_force_record, alpha=alpha)
    if worse is not None:
        return Refit(threshold, False, f"the refit is worse than the threshold in force: {worse}", record,
                     in_force_record)
    return Refit(threshold, True, "the refit is no worse than the threshold in force on these runs", record,
                 in_force_record)


def labelled_runs(session: Session, *, label: str) -> list[tuple[int, str, str, str]]:
    """(id, name, method, family tag) of runs with ground truth ``label`` at step 0."""
    return runs_labelled_at_base(session, name=label)


def run_record(session: Session, *, run_id: int, name: str, method: str, family: str,
               label: str) -> RunRecord | None:
    """What the service measured of the run and its ground truth; None when it has no checkpoint
    after the base."""
    values = label_values(session, run_id=run_id, name=label)
    last = last_step(session, run_id=run_id)
    if last is None:
        return None
    ood = ood_history(session, run_id=run_id, up_to_step=last)
    history = run_history(session, run_id=run_id)
    keep = [i for i, s in enumerate(ood.steps) if s > 0]  # a step-0 checkpoint is the base itself
    if not keep:
        return None
    drops, _ = ood_drops(ood)
    entropy = [b["entropy"] for b in run_base_scores(session, run_id=run_id)
               if b["domain"] == "ood" and b["status"] == "ready" and b["entropy"] is not None]
    steps = [ood.steps[i] for i in keep]
    return RunRecord(
        run=name, family=family, method=method, steps=tuple(steps), drops=tuple(drops[i] for i in keep),
        kl=tuple(history.rows[i].get("kl_fwd_ood") for i in keep),
        base_entropy=sum(entropy) / len(entropy) if entropy else None,
        label_base=values[0], labels=tuple(values.get(s) for s in steps),
        probe_scores=tuple(tuple({"probe_set": r.probe_set, "n_items": r.n_items, "accuracy": list(r.accuracy),
                                  "loglik": list(r.loglik)} for r in ood.results[i]) for i in keep),
    )


def records(session: Session, *, label: str, runs: list[str] | None = None) -> list[RunRecord]:
    out = []
    for run_id, name, method, family in labelled_runs(session, label=label):
        if runs and name not in runs:
            continue
        record = run_record(session, run_id=run_id, name=name, method=method, family=family, label=label)
        if record is not None:
            out.append(record)
    return out


def stored_records(settings: Settings, *, label: str, runs: list[str] | None = None) -> list[RunRecord]:
    """`records` of the configured database (the data dir's embedded one by default)."""
    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=False)
        engine = make_engine(url, pool_size=1)
        with make_sessionmaker(engine)() as session:
            found = records(session, label=label, runs=runs)
        engine.dispose()
    return found


def traces(session: Session, *, label: str, relative_drop: float, horizon: int,
           runs: list[str] | None = None) -> list[RunTrace]:
    """The labelled runs replayed through the alarms (`drift.replay.replay`)."""
    return [replay(r, relative_drop=relative_drop, horizon=horizon)
            for r in records(session, label=label, runs=runs)]


def scored_runs(runs: list[RunTrace], *, model: FittedHazard | None, horizon: int,
                relative_drop: float) -> tuple[FittedHazard, list[RunTrace]]:
    """The model refitted on these runs, shrunk toward ``model`` (the one in force), or (None) fitted on
    them from nothing, and the runs each scored by such a fit without it (leave one run out)."""
    inputs = SERVED if model is None else model.inputs
    fitted = HazardModel(inputs=inputs, threshold=relative_drop, toward=model).fit(runs).model  # type: ignore[arg-type]
    assert fitted is not None
    return fitted, leave_one_out(runs, inputs=inputs, horizon=horizon, threshold=relative_drop,  # type: ignore[arg-type]
                                 toward=model)


def in_force_scores(runs: list[RunTrace], *, model: FittedHazard, horizon: int) -> list[RunTrace]:
    """The runs scored by the model in force, which saw none of them."""
    scorer = HazardModel.of(model)
    return [scorer.scored(t, horizon=horizon) for t in runs]


def calibrate(runs: list[RunTrace], scored: list[RunTrace], *, alpha: float, horizon: int, floor: float,
              relative_drop: float, fitted_here: bool) -> tuple[float | None, list[HeldOut]]:
    """The alarm threshold from every non-forgetting run's score (``scored``), never below ``floor``
    (`drift.evaluation.alarm_threshold`), and the held-out record, leave one method out and leave one family
    out. With ``fitted_here`` (the model was fitted on ``runs``) each held-out group is scored by a model
    refitted without it (`drift.hazard_heldout.held_out_alarms`); else as ``scored`` (each run by the refit shrunk toward
    the model in force, fitted without it)."""
    if len(runs) < 3:
        raise ValueError(f"calibration needs at least 3 labelled runs, got {len(runs)}. Post ground truth with "
                         "POST /v1/runs/{run}/labels (including step 0 for the base)")
    quiet = [max((p for p in t.forecast if p is not None), default=0.0) for t in scored if t.onset is None]
    threshold = alarm_threshold(quiet, alpha=alpha, floor=floor)
    record = []
    for by in ("method", "family"):
        result = held_out_alarms(runs, by=by, inputs=SERVED, alpha=alpha, horizon=horizon, floor=True,
                                 threshold=relative_drop) if fitted_here else None
        record.append(result or held_out(scored, by=by, alpha=alpha, horizon=horizon, floor=floor))
    return threshold, record


def report(result: HeldOut) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    return (f"{result.split}: runs={result.n_runs} forgetting={result.n_forgetting} auc_h3={fmt(result.auc_h3)} "
            f"persistence_auc={fmt(result.persistence_auc)} kl_auc={fmt(result.kl_auc)} "
            f"risk_set={result.risk_set_size} forecast_coverage={fmt(result.forecast_coverage)} "
            f"early2_share={fmt(result.early2_share)} median_lead_ckpts={fmt(result.median_lead_ckpts)} "
            f"false_alarm_runs={fmt(result.false_alarm_runs)} detect_rate={fmt(result.detect_rate)}")


def save(path: Path, *, threshold: float | None, alpha: float, model: FittedHazard, runs: list[RunTrace],
         record: list[HeldOut], recipe: dict[str, Any], decision: Refit | None = None,
         pooled_with: list[float] | None = None) -> None:
    """``runs`` are the scored runs. ``quiet_run_maxima`` is the pool the threshold comes from: these runs' largest forecasts plus
    ``pooled_with`` (the shipped maxima a pooled refit used), so the file can be shipped as is and a
    later refit pools with every quiet run behind it."""
    own = [max((p for p in t.forecast if p is not None), default=0.0) for t in runs if t.onset is None]
    document = {"format": FORMAT, "alarm_probability": threshold, "alpha": alpha, "forecast_model": model.to_dict(),
                "n_non_forgetting_runs": len(own), "n_runs": len(runs),
                "held_out": [asdict(r) for r in record], "recipe": recipe,
                "quiet_run_maxima": sorted(own + list(pooled_with or []))}
    if decision is not None:
        document |= {"alarm_probability": decision.threshold, "installed": decision.installed,
                     "reason": decision.reason, "refit": asdict(decision.refit),
                     "in_force": asdict(decision.in_force)}
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
