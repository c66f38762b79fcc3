"""`forgetwatch calibrate`: fit the risk model on finished runs that carry forgetting labels.

A run is usable when the trainer posted its ood ground truth (`POST /v1/runs/{run}/labels`, e.g.
`ood_accuracy`) for the base (step 0) and for its checkpoints. Target per checkpoint: the ood
metric falls at least `relative_drop` below the base within the next `horizon` checkpoints.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from drift.forecast import feature_rows
from drift.risk import Evaluation, RiskModel, evaluate_leave_one_run_out, label_future_forgetting
from service.db.features import run_history


@dataclass(frozen=True)
class Dataset:
    rows: list[dict[str, float]]
    labels: list[int]
    dropped: list[int]
    groups: list[str]
    steps: list[int]
    runs: list[str]


def build_dataset(session: Session, *, label: str, horizon: int, relative_drop: float,
                  runs: list[str] | None = None) -> Dataset:
    names = runs or list(session.execute(
        text("SELECT DISTINCT r.name FROM runs r JOIN run_labels l ON l.run_id = r.id AND l.name = :l "
             "ORDER BY r.name"), {"l": label}).scalars())
    data = Dataset([], [], [], [], [], [])
    for name in names:
        run_id = session.execute(text("SELECT id FROM runs WHERE name = :n"), {"n": name}).scalar()
        values = dict(session.execute(text("SELECT step, value FROM run_labels WHERE run_id = :r AND name = :l"),
                                      {"r": run_id, "l": label}).all())
        history = run_history(session, run_id=run_id)
        if 0 not in values or len(history.steps) < 2:
            continue  # no base value, or too short to learn from
        series = [values.get(step) for step in history.steps]
        base = values[0]
        rows = feature_rows(history.rows, history.steps)
        labels = label_future_forgetting(series, base=base, horizon=horizon, relative_drop=relative_drop)
        dropped = label_future_forgetting(series, base=base, horizon=0, relative_drop=relative_drop)
        # A checkpoint at step 0 is the base itself (no drift by construction): not a prediction.
        keep = [i for i, step in enumerate(history.steps) if step > 0]
        data.rows.extend(rows[i] for i in keep)
        data.labels.extend(labels[i] for i in keep)
        data.dropped.extend(dropped[i] for i in keep)
        data.groups.extend([name] * len(keep))
        data.steps.extend(history.steps[i] for i in keep)
        data.runs.append(name)
    return data


def calibrate(data: Dataset, *, horizon: int, threshold: float) -> tuple[RiskModel, Evaluation]:
    if len(data.runs) < 3 or len(set(data.labels)) < 2:
        raise ValueError(
            f"calibration needs at least 3 labelled runs with both outcomes; got {len(data.runs)} runs, "
            f"labels {sorted(set(data.labels))}. Post ground truth with POST /v1/runs/{{run}}/labels "
            "(including step 0 for the base)"
        )
    evaluation = evaluate_leave_one_run_out(data.rows, data.labels, data.groups, data.steps, dropped=data.dropped,
                                            horizon=horizon, threshold=threshold)
    model = RiskModel().fit(data.rows, data.labels, data.groups)
    return model, evaluation


def report(evaluation: Evaluation) -> str:
    def fmt(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"

    e = asdict(evaluation)
    return (f"runs={e['n_runs']} checkpoints={e['n_checkpoints']} positive_rate={fmt(e['positive_rate'])} "
            f"loro_roc_auc={fmt(e['roc_auc'])} forgetting_runs={e['n_forgetting_runs']} "
            f"detected={e['n_detected_runs']} median_lead_checkpoints={fmt(e['median_lead_time_checkpoints'])} "
            f"median_lead_steps={fmt(e['median_lead_time_steps'])}")


def save(model: RiskModel, evaluation: Evaluation, path: Path, *, recipe: dict[str, Any]) -> None:
    document = {"model": model.to_dict(), "evaluation": asdict(evaluation), "recipe": recipe}
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
