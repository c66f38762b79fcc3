"""From a run's measurement history to its two forgetting statements and its warnings.

- detection (measured ood forgetting, `drift.alarms.first_detection`) and the forecast of it
  (`drift.alarms.forecast_detection`), from the ood probe sets' paired scores vs the base;
- the probe-free parameter heuristic (`drift.risk.heuristic_risk`), labelled as such and never
  an alarm;
- Theil–Sen trends of raw series, a change point on ood KL, and findings (degeneration included).

The math lives in `drift/`; this module picks the series and thresholds and shapes the result for
storage and the API.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from scipy.stats import theilslopes

from drift.alarms import (
    REASONS,
    CrossingForecast,
    RelativeDrop,
    first_detection,
    forecast_detection,
    measured_drop,
    worst_drop,
)
from drift.features import OOD_DROP, OOD_DROP_HIGH, OOD_DROP_LOW, OOD_KL_ENTROPY_SHARE, kl_entropy_share
from drift.findings import findings
from drift.forecast import feature_rows, page_hinkley, theil_sen_forecast
from drift.hazard import FittedHazard, hazard_forecast
from drift.risk import RiskEstimate, heuristic_risk
from service.db.features import OodHistory, RunHistory

FORECAST_WINDOW = 6
# Series forecast to their thresholds: (name, feature, direction). Thresholds come from Settings
# or, for relative ones, from the run's own base values.
FORECAST_SERIES = (("ood_kl", "kl_fwd_ood", "up"), ("param_drift", "param_rel_l2", "up"),
                   ("diversity", "distinct2", "down"))


@dataclass(frozen=True)
class Assessment:
    forecast: CrossingForecast
    detection: dict[str, Any]
    heuristic: RiskEstimate
    forecasts: dict[str, dict[str, Any]]
    changepoint: bool
    acceleration_ratio: float | None
    findings: list[dict[str, Any]]
    features: dict[str, float]


def _finite(values: list[float | None]) -> bool:
    return any(v is not None and math.isfinite(v) for v in values)


def _forecasts(history: RunHistory, *, ood_kl_nats: float, param_rel_l2: float) -> dict[str, dict[str, Any]]:
    """Informational Theil–Sen trends of raw series to fixed thresholds (no alert pages on them)."""
    latest = history.rows[-1]
    thresholds = {"ood_kl": ood_kl_nats, "param_drift": param_rel_l2}
    if latest.get("distinct2_base"):
        thresholds["diversity"] = 0.6 * latest["distinct2_base"]
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


def ood_drops(ood: OodHistory) -> tuple[list[RelativeDrop | None], str | None]:
    """The worst ood probe set's relative drop per checkpoint, and why the last one has none."""
    drops: list[RelativeDrop | None] = []
    code = None
    for results in ood.results:
        found, codes = [], []
        for r in results:
            drop, why = measured_drop(probe_set=r.probe_set, n_items=r.n_items, accuracy=r.accuracy, loglik=r.loglik)
            found.append(drop) if drop is not None else codes.append(why)
        drops.append(worst_drop(found))
        code = None if found else (codes[0] if codes else "not_measured")
    if ood.n_ood_probe_sets == 0:
        code = "no_ood_probes"
    return drops, code


def _abstained(forecast: CrossingForecast, code: str, ood: OodHistory) -> CrossingForecast:
    detail = ""
    if code == "not_measured" and ood.analysis_status in ("failed", "skipped") and ood.analysis_error:
        detail = f"response analysis {ood.analysis_status}: {ood.analysis_error}"
    elif code == "not_measured" and ood.analysis_status in ("pending", "processing"):
        detail = "response analysis still running"
    reason = REASONS[code] + (f": {detail}" if detail else "")
    return dataclasses.replace(forecast, applicable=False, probability=None, reason_code=code, reason=reason)


def assess(history: RunHistory, ood: OodHistory, *, relative_drop: float, horizon: int, ood_kl_nats: float,
           param_rel_l2: float, model: FittedHazard, base_entropy_ood: float | None = None) -> Assessment:
    """Detection and forecast of ood forgetting at the last checkpoint of ``history`` (the trend's
    abstentions and time to crossing, ``model``'s probability: `drift.hazard.hazard_forecast`), the
    labelled probe-free parameter heuristic, trend forecasts of the raw series, and findings."""

    if ood.steps != history.steps:
        raise ValueError("run history and ood history cover different checkpoints")
    drops, code = ood_drops(ood)
    # A checkpoint at step 0 is the base measured against itself: the forecast sees the same series
    # whether or not the trainer posts it (the service measures the base on its own).
    trained = [i for i, s in enumerate(ood.steps) if s > 0]
    if not trained or trained[-1] != len(ood.steps) - 1:
        forecast = CrossingForecast(False, None, horizon, reason_code="base_checkpoint",
                                    reason=REASONS["base_checkpoint"])
    else:
        measured = [drops[i] for i in trained]
        trend = forecast_detection([ood.steps[i] for i in trained], measured, threshold=relative_drop, horizon=horizon)
        forecast = hazard_forecast(trend, measured, model, horizon=horizon)
        if trend.applicable and not math.isclose(model.threshold, relative_drop):
            forecast = dataclasses.replace(
                forecast, applicable=False, probability=None, reason_code="uncalibrated",
                reason=f"{REASONS['uncalibrated']}: fitted for a {model.threshold:.0%} drop, forgetting is "
                       f"{relative_drop:.0%} here (FORGETWATCH_FORGETTING_RELATIVE_DROP); run `forgetwatch calibrate`")
    if code is not None and drops[-1] is None:
        forecast = _abstained(forecast, code, ood)
    first = first_detection(drops, threshold=relative_drop)
    latest = drops[-1]
    detection: dict[str, Any] = {
        "threshold": relative_drop, "measured": latest is not None,
        "detected": latest is not None and latest.low >= relative_drop,
        "first_detected_step": None if first is None else ood.steps[first],
        **({} if latest is None else {"probe_set": latest.probe_set, "metric": latest.metric, "drop": latest.drop,
                                      "drop_low": latest.low, "drop_high": latest.high, "n_items": latest.n_items}),
    }
    if latest is None:
        detection["reason"] = forecast.reason if code is not None else REASONS["not_measured"]
    rows = feature_rows(history.rows, history.steps)
    kl = [row.get("kl_fwd_ood") for row in history.rows]
    changepoint = False
    if sum(v is not None for v in kl) >= 5:
        change = page_hinkley([v for v in kl if v is not None], delta=0.5, threshold=8.0)
        changepoint = change.alarm_index is not None and change.alarm_index >= len(kl) - 2
    found = findings(history.rows, history.steps, nonfinite_names=history.nonfinite_names)
    features = {} if latest is None else {OOD_DROP.name: latest.drop, OOD_DROP_LOW.name: latest.low,
                                          OOD_DROP_HIGH.name: latest.high}
    kl_now = history.rows[-1].get("kl_fwd_ood") if history.rows else None
    if kl_now is not None and math.isfinite(kl_now) and kl_now >= 0 and base_entropy_ood is not None:
        features[OOD_KL_ENTROPY_SHARE.name] = kl_entropy_share(kl_now, base_entropy_ood)
    return Assessment(
        forecast=forecast,
        detection=detection,
        heuristic=heuristic_risk(rows[-1]),
        forecasts=_forecasts(history, ood_kl_nats=ood_kl_nats, param_rel_l2=param_rel_l2),
        changepoint=changepoint,
        acceleration_ratio=_acceleration(history),
        findings=[dataclasses.asdict(f) for f in found],
        features=features,
    )
