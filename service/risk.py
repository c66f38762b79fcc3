"""From a run's measurement history to its risk, forecasts, change point and findings.

The math lives in `drift.forecast`, `drift.risk` and `drift.findings`; this module picks the
series, thresholds and model, and shapes the result for storage and the API.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import theilslopes

from drift.findings import findings
from drift.forecast import PROBE_FEATURES, feature_rows, page_hinkley, theil_sen_forecast
from drift.risk import RiskEstimate, RiskModel, heuristic_risk
from service.db.features import RunHistory

DEFAULT_MODEL = Path(__file__).with_name("risk_model.json")
FORECAST_WINDOW = 6
# Series forecast to their thresholds: (name, feature, direction). Thresholds come from Settings
# or, for relative ones, from the run's own base values.
FORECAST_SERIES = (("ood_kl", "kl_fwd_ood", "up"), ("param_drift", "param_rel_l2", "up"),
                   ("diversity", "distinct2", "down"), ("ood_forgetting", "acc_change_ood", "down"))


@dataclass(frozen=True)
class Assessment:
    estimate: RiskEstimate
    forecasts: dict[str, dict[str, Any]]
    changepoint: bool
    acceleration_ratio: float | None
    findings: list[dict[str, Any]]
    features: dict[str, float]


@functools.cache
def load_model(path: str) -> RiskModel | None:
    file = Path(path)
    if not file.exists():
        return None
    document = json.loads(file.read_text())
    return RiskModel.from_dict(document.get("model", document))  # written by `forgetwatch calibrate`


def _finite(values: list[float | None]) -> bool:
    return any(v is not None and math.isfinite(v) for v in values)


def _forecasts(history: RunHistory, *, ood_kl_nats: float, param_rel_l2: float,
               relative_drop: float) -> dict[str, dict[str, Any]]:
    latest = history.rows[-1]
    thresholds = {"ood_kl": ood_kl_nats, "param_drift": param_rel_l2}
    if latest.get("distinct2_base"):
        thresholds["diversity"] = 0.6 * latest["distinct2_base"]
    if latest.get("acc_base_ood"):
        thresholds["ood_forgetting"] = -relative_drop * latest["acc_base_ood"]
    out: dict[str, dict[str, Any]] = {}
    for name, feature, direction in FORECAST_SERIES:
        values = [row.get(feature) for row in history.rows][-FORECAST_WINDOW:]
        steps = history.steps[-FORECAST_WINDOW:]
        if name not in thresholds or not _finite(values):
            continue
        forecast = theil_sen_forecast(steps, values, threshold=thresholds[name], direction=direction)
        out[name] = {"threshold": thresholds[name], **dataclasses.asdict(forecast)}
    return out


def _acceleration(history: RunHistory) -> float | None:
    """Slope of global relative L2 per step over the last 3 checkpoints ÷ the 3 before them."""
    values = [row.get("param_rel_l2") for row in history.rows]
    if len(values) < 6 or not all(v is not None for v in values[-6:]):
        return None
    recent = theilslopes(values[-3:], history.steps[-3:])[0]
    earlier = theilslopes(values[-6:-3], history.steps[-6:-3])[0]
    if earlier <= 0:
        return None
    return recent / earlier


def assess(history: RunHistory, *, model_path: str, ood_kl_nats: float, param_rel_l2: float,
           relative_drop: float) -> Assessment:
    rows = feature_rows(history.rows, history.steps)
    current = rows[-1]
    model = load_model(model_path)
    # The fitted model learned from runs with probes; without any probe measurement its other inputs
    # would be imputed, so the probe-free fallback (parameter drift) answers instead, and says so.
    has_probes = any(current.get(k) is not None for k in PROBE_FEATURES)
    estimate = model.predict(current) if model is not None and has_probes else heuristic_risk(current)
    kl = [row.get("kl_fwd_ood") for row in history.rows]
    changepoint = False
    if sum(v is not None for v in kl) >= 5:
        change = page_hinkley([v for v in kl if v is not None], delta=0.5, threshold=8.0)
        changepoint = change.alarm_index is not None and change.alarm_index >= len(kl) - 2
    found = findings(history.rows, history.steps, nonfinite_names=history.nonfinite_names)
    return Assessment(
        estimate=estimate,
        forecasts=_forecasts(history, ood_kl_nats=ood_kl_nats, param_rel_l2=param_rel_l2,
                             relative_drop=relative_drop),
        changepoint=changepoint,
        acceleration_ratio=_acceleration(history),
        findings=[dataclasses.asdict(f) for f in found],
        features={k: v for k, v in current.items() if isinstance(v, float) and math.isfinite(v)},
    )
