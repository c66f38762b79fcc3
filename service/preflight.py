"""The pre-flight forecast of a stage: the forgetting each retention set will suffer, predicted from
its domain distance to a sample of the stage's training prompts (the preview).

Two halves, so the embedding can run where model files are opened (the isolated child of a queue
job, `service.queue.preview_tasks`):

1. `plan_forecast` (database): the preview, the prompts of every probe set involved, and the run's
   history: for each earlier stage k and each of its retention sets p with both rows measured in the
   transfer matrix, the loss ``relative_drop(R[k−1, p], R[k, p])`` (positive = forgotten; of accuracy
   when it has a nonzero start, else of reference log-likelihood, the order `retention_drops` uses).
   Stage k's training prompts are its own preview when one was posted, else the prompts of the probe
   sets it trains for.
2. `make_forecast` (math on the embeddings): the RBF-MMD distance (`drift.preflight.domain_distance`)
   of every (training prompts, retention set) pair, the forgetting curve fitted on the history (the
   documented prior of `drift.preflight` when the run has none), and the forecast with its interval
   for each retention set of the coming stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from drift.preflight import domain_distance, fit_forgetting_curve, predict_forgetting
from drift.transfer import relative_drop
from service import retention, transfer
from service.db import previews
from service.db import stages as db

CONFIDENCE = 0.9
PREVIEW_KEY = "preview"


@dataclass(frozen=True)
class HistoryPair:
    """One measured pair: stage `stage` (its prompts under `source_key`) cost `probe_set` `loss`."""

    stage: str
    source: str  # "preview" or "probe_sets"
    source_keys: tuple[str, ...]
    probe_set: str
    metric: str
    loss: float


@dataclass(frozen=True)
class ForecastPlan:
    """What the forecast of one preview needs: the texts to embed by key (``preview``,
    ``probe:<name>``, ``stage:<name>``), the coming stage's retention sets and the run's history."""

    stage: str
    position: int
    prompts: tuple[str, ...]
    retention_sets: tuple[str, ...]
    texts: dict[str, list[str]]
    history: tuple[HistoryPair, ...]


def probe_key(name: str) -> str:
    return f"probe:{name}"


def _matrix_values(report: dict[str, Any]) -> dict[str, dict[str, list[float | None]]]:
    """metric -> probe set -> its column of R (row 0 the base)."""
    out: dict[str, dict[str, list[float | None]]] = {}
    for metric, found in report["metrics"].items():
        names = [p["name"] for p in found["probe_sets"]]
        out[metric] = {name: [row[j]["value"] for row in found["matrix"]] for j, name in enumerate(names)}
    return out


def plan_forecast(session: Session, *, run_id: int, stage_name: str) -> ForecastPlan | None:
    """The plan of the stored preview of the run's stage `stage_name`; None when it has none."""
    preview = previews.get_preview(session, run_id=run_id, name=stage_name)
    if preview is None:
        return None
    stages = db.run_stages(session, run_id=run_id)
    domains = db.probe_set_domains(session, run_id=run_id)
    position = next(s.position for s in stages if s.name == stage_name)
    posted = previews.run_previews(session, run_id=run_id)
    columns = _matrix_values(transfer.transfer_report(session, run_id=run_id, n_bootstrap=1))
    history: list[HistoryPair] = []
    for stage in stages[: position - 1]:
        own = stage.name in posted
        keys = (f"stage:{stage.name}",) if own else tuple(probe_key(p) for p in stage.probe_sets)
        for name in retention.retention_sets(stages, domains, stage.position):
            for metric in transfer.METRICS:
                column = columns.get(metric, {}).get(name)
                if column is None:
                    continue
                start, end = column[stage.position - 1], column[stage.position]
                loss = relative_drop(start, end) if start is not None and end is not None else None
                if loss is not None:
                    history.append(HistoryPair(stage.name, "preview" if own else "probe_sets", keys, name, metric,
                                               loss))
                    break  # accuracy when it has a nonzero start, else log-likelihood
    sets = tuple(retention.retention_sets(stages, domains, position))
    needed = set(sets) | {k.removeprefix("probe:") for pair in history for k in pair.source_keys} | {
        pair.probe_set for pair in history}
    prompts = previews.probe_set_prompts(session, names=sorted(n for n in needed if not n.startswith("stage:")))
    texts: dict[str, list[str]] = {PREVIEW_KEY: list(preview.prompts)}
    texts.update({probe_key(name): found for name, found in prompts.items() if found})
    texts.update({f"stage:{name}": list(found) for name, found in posted.items()
                  if name != stage_name and any(f"stage:{name}" in p.source_keys for p in history)})
    return ForecastPlan(stage_name, position, preview.prompts, sets, texts, tuple(history))


def _distance(embeddings: dict[str, np.ndarray], keys: tuple[str, ...], target: str) -> float | None:
    sources = [embeddings[k] for k in keys if k in embeddings]
    if not sources or target not in embeddings:
        return None
    x, y = np.concatenate(sources), embeddings[target]
    if x.shape[0] < 2 or y.shape[0] < 2:
        return None
    return domain_distance(x, y).mmd


def make_forecast(plan: ForecastPlan, *, embedder: str, embeddings: dict[str, np.ndarray]) -> dict[str, Any]:
    """The stored forecast: the curve, the history it was fitted on and one entry per retention set."""
    fitted = []
    for pair in plan.history:
        distance = _distance(embeddings, pair.source_keys, probe_key(pair.probe_set))
        if distance is not None:
            fitted.append({"stage": pair.stage, "probe_set": pair.probe_set, "metric": pair.metric,
                           "training_prompts": pair.source, "distance": distance, "loss": pair.loss})
    curve = fit_forgetting_curve([f["distance"] for f in fitted], [f["loss"] for f in fitted])
    entries = []
    for name in plan.retention_sets:
        distance = _distance(embeddings, (PREVIEW_KEY,), probe_key(name))
        if distance is None:
            entries.append({"probe_set": name, "distance": None, "loss": None, "ci_low": None, "ci_high": None,
                            "reason": f"probe set {name!r} has fewer than 2 items to compare with"})
            continue
        [found] = predict_forgetting(curve, [distance], confidence=CONFIDENCE)
        entries.append({"probe_set": name, "distance": found.distance, "loss": found.loss,
                        "ci_low": found.ci_low, "ci_high": found.ci_high, "reason": None})
    note = (
        "no earlier stage of this run has a measured retention loss yet: the forecast is the documented prior "
        "(drift.preflight: an inverted U peaking at MMD 0.2) with its wide interval"
        if curve.source == "prior"
        else f"fitted on {curve.n_pairs} (distance, loss) pairs of this run's earlier stages"
    )
    if not plan.retention_sets:
        note = "the stage has no retention sets (no earlier stage and no ood probe set): nothing to forecast"
    return {
        "stage": plan.stage,
        "embedder": embedder,
        "distance": "rbf_mmd_median_bandwidth",
        "loss": "relative drop of the retention set's score across the stage (positive = forgotten)",
        "confidence": CONFIDENCE,
        "n_prompts": len(plan.prompts),
        "curve": asdict(curve),
        "note": note,
        "retention_sets": entries,
        "history": fitted,
    }
