"""Two statements about ood forgetting, kept apart.

*Detected* (a measurement): the paired-bootstrap interval of the relative drop of an ood probe
score is entirely at or above the threshold, i.e. its lower bound ``drop_low ≥ threshold``.

*Predicted* (a forecast): the probability that *detected* becomes true within the next
``horizon`` checkpoints, made only while it is not true yet, only from checkpoints up to the
current one, and only from at least ``min_points`` measured checkpoints. Once detected, the
forecast abstains with reason ``detected``: it is a fact then, not a prediction.

Forecast (``model="trend/1"``): an ordinary least-squares line through the last ``window`` measured
relative drops against the checkpoint index (steps divided by the run's current checkpoint spacing,
the gap between its last two measured checkpoints, `drift.features.CHECKPOINT_INDEX`: a run that
saves densely at first and then every N steps is forecast N steps a checkpoint once it does). The drop at checkpoint ``t + k`` is predicted with the usual
prediction interval of a linear regression (Student t, ``n − 2`` degrees of freedom)::

    μ_k = a + b·k,   var_k = σ² (1 + 1/n + (k − ū)² / Σ(u − ū)²)
    σ² = max(residual variance, mean measurement variance of the points, granularity²)

where the measurement variance comes from each point's bootstrap interval (half-width / z) and
the granularity is half a step of the score (one item of the probe set, relative to the base).
Detection at ``t + k`` needs the point estimate to reach ``L = threshold + (drop_t − drop_low_t)``
(the current interval's lower margin, assumed to stay as wide). ``probability = max_k P(drop_{t+k} ≥ L)``,
``k = 1..horizon``: the chance at the most likely of the next checkpoints, a lower bound of the
chance that any of them crosses. A run whose drops stay at zero has zero slope and the noise floor
of its probe set, so its probability stays far below any sensible alarm threshold, provided the floor
is small: a probe set on which one item is more than ``threshold / z`` of the base's score (about 20
right answers at the base for a 10 % threshold) abstains as ``too_coarse``, since half an item of
noise extrapolated from 3 points gave such a run ~0.35 (`bench.forecast_noise`).

Every input is dimensionless (`drift.features`); nothing is imputed: a missing or non-finite input
gives ``applicable=False`` with a reason code and a message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "REASONS",
    "CrossingForecast",
    "RelativeDrop",
    "drop_sd",
    "first_detection",
    "forecast_detection",
    "measured_drop",
    "no_change_ceiling",
    "relative_drop",
    "worst_drop",
]

MODEL = "trend/1"
#: Reason codes of a forecast that abstains (bounded: exported as a Prometheus label).
REASONS = {
    "no_ood_probes": "the run has no ood probe set",
    "too_few_items": "the ood probe set is too small to measure a drop",
    "too_coarse": "the ood probe set is too coarse to forecast a crossing",
    "base_unusable": "the base's ood score cannot anchor a relative drop",
    "not_measured": "ood forgetting was not measured at this checkpoint",
    "non_finite": "an ood measurement is NaN or infinite",
    "too_few_checkpoints": "too few measured checkpoints for a trend",
    "detected": "forgetting is already detected: a measurement, not a forecast",
    "base_checkpoint": "this checkpoint is the base itself (step 0)",
    "uncalibrated": "the forecast model was fitted for another forgetting threshold",
}
#: The interval half-width is z · sd for a 95 % interval.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class RelativeDrop:
    """Relative drop vs base of one probe set's ood score, ``(base − current) / |base|``, with its
    paired-bootstrap interval ``[low, high]``; positive = worse than the base."""

    probe_set: str
    metric: str  # "accuracy" | "loglik"
    drop: float
    low: float
    high: float
    base: float
    n_items: int


@dataclass(frozen=True)
class CrossingForecast:
    """``probability``: P(detected within ``horizon`` checkpoints), None when not ``applicable``
    (``reason_code`` in `REASONS`, ``reason`` a sentence). ``checkpoints_to_crossing`` is where the
    trend's point estimate reaches the detection level (None when flat or falling), with an interval
    from the 80 % interval of the slope (``high`` None: may never cross)."""

    applicable: bool
    probability: float | None
    horizon: int
    model: str = MODEL
    reason_code: str | None = None
    reason: str | None = None
    n_points: int = 0
    slope_per_checkpoint: float | None = None
    checkpoints_to_crossing: float | None = None
    checkpoints_to_crossing_low: float | None = None
    checkpoints_to_crossing_high: float | None = None
    steps_per_checkpoint: float | None = None


def relative_drop(*, probe_set: str, metric: str, base: float, change: float, ci_low: float, ci_high: float,
                  n_items: int) -> RelativeDrop:
    """From ``change = current − base`` and its interval ``[ci_low, ci_high]`` (score units)."""
    values = (base, change, ci_low, ci_high)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"base, change and interval must be finite numbers, got {values}")
    if base == 0:
        raise ValueError("a relative drop needs a nonzero base score")
    if ci_low > ci_high:
        raise ValueError(f"interval is reversed: [{ci_low}, {ci_high}]")
    scale = abs(base)
    return RelativeDrop(probe_set, metric, -change / scale, -ci_high / scale, -ci_low / scale, float(base),
                        int(n_items))


#: Fewer probe items than this cannot show a 10 % drop apart from noise.
MIN_ITEMS = 10
#: A base log-likelihood closer to 0 than this (nats/token) makes a relative drop meaningless.
LOGLIK_BASE_MIN = 0.05


Score = tuple[float | None, float | None, float | None, float | None]  # base, change, ci_low, ci_high


def measured_drop(*, probe_set: str, n_items: int, accuracy: Score | None,
                  loglik: Score | None) -> tuple[RelativeDrop | None, str | None]:
    """One ood probe set's relative drop, or None with a reason code (`REASONS`) saying why not.
    Accuracy when the probe set has checkable answers and a base accuracy above 0; else reference
    log-likelihood when the base's is at least `LOGLIK_BASE_MIN` nats/token from 0."""
    if n_items < MIN_ITEMS:
        return None, "too_few_items"
    for metric, score in (("accuracy", accuracy), ("loglik", loglik)):
        if score is None or all(v is None for v in score):
            continue
        if any(v is None or not math.isfinite(v) for v in score):
            return None, "non_finite"
        base, change, low, high = score
        if (metric == "accuracy" and base <= 0) or (metric == "loglik" and abs(base) < LOGLIK_BASE_MIN):
            continue
        return relative_drop(probe_set=probe_set, metric=metric, base=base, change=change, ci_low=low,
                             ci_high=high, n_items=n_items), None
    return None, "base_unusable"


def worst_drop(drops: Sequence[RelativeDrop]) -> RelativeDrop | None:
    """The probe set whose interval is furthest above zero (largest lower bound, then largest drop)."""
    return max(drops, key=lambda d: (d.low, d.drop), default=None)


def first_detection(drops: Sequence[RelativeDrop | None], *, threshold: float) -> int | None:
    """Index of the first checkpoint whose drop interval lies at or above ``threshold``."""
    _check_threshold(threshold)
    return next((i for i, d in enumerate(drops) if d is not None and d.low >= threshold), None)


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be a relative drop in (0, 1), got {threshold}")


def _granularity(d: RelativeDrop) -> float:
    """Half of the smallest change the score can show, relative to the base (accuracy: one item)."""
    if d.metric == "accuracy" and d.n_items > 0:
        return 0.5 / (d.n_items * abs(d.base))
    return 1e-3


def drop_sd(d: RelativeDrop) -> float:
    """The standard deviation of a measured drop: its bootstrap interval's half-width / z, at least half
    an item of the score (`_granularity`), so a zero-width interval still carries the probe set's grain."""
    return max((d.high - d.low) / (2 * Z95), _granularity(d))


def forecast_detection(
    steps: Sequence[float],
    drops: Sequence[RelativeDrop | None],
    *,
    threshold: float,
    horizon: int = 3,
    window: int = 6,
    min_points: int = 3,
) -> CrossingForecast:
    """Forecast for the last checkpoint of ``(steps, drops)`` (module docstring). ``drops[i]`` is
    the checkpoint's worst ood probe set (`worst_drop`) or None where unmeasured."""
    _check_threshold(threshold)
    if horizon < 1 or window < 2 or min_points < 3:
        raise ValueError(f"need horizon >= 1, window >= 2, min_points >= 3; got {horizon}, {window}, {min_points}")
    if len(steps) != len(drops) or not steps:
        raise ValueError(f"steps and drops must be non-empty and of equal length, got {len(steps)}, {len(drops)}")
    x_all = np.asarray(steps, dtype=np.float64)
    if not np.all(np.isfinite(x_all)) or np.any(np.diff(x_all) <= 0):
        raise ValueError(f"steps must be finite and strictly increasing, got {list(steps)}")

    def abstain(code: str, detail: str = "", n: int = 0) -> CrossingForecast:
        reason = REASONS[code] + (f": {detail}" if detail else "")
        return CrossingForecast(False, None, horizon, reason_code=code, reason=reason, n_points=n)

    if drops[-1] is None:
        return abstain("not_measured")
    found = first_detection(drops, threshold=threshold)
    if found is not None:
        return abstain("detected", f"since step {int(x_all[found])}")
    measured = [i for i, d in enumerate(drops) if d is not None][-window:]
    if len(measured) < min_points:
        return abstain("too_few_checkpoints", f"{len(measured)} measured, a forecast needs {min_points}",
                       len(measured))
    pts = [drops[i] for i in measured]
    if not all(math.isfinite(v) for d in pts for v in (d.drop, d.low, d.high)):
        return abstain("non_finite", n=len(pts))
    coarse = max(pts, key=_granularity)
    if _granularity(coarse) > threshold / (2 * Z95):
        return abstain("too_coarse", f"one item is {2 * _granularity(coarse):.1%} of the base's score, a forecast "
                       f"needs at most {threshold / Z95:.1%}: about {math.ceil(Z95 / threshold)} items the base "
                       "answers right", len(pts))
    x = x_all[measured]
    spacing = float(x[-1] - x[-2])  # the current cadence: the next checkpoints are expected this far apart
    u = (x - x[-1]) / spacing  # checkpoint index, 0 at the current checkpoint
    y = np.array([d.drop for d in pts])
    n = len(y)
    u_mean = float(u.mean())
    sxx = float(((u - u_mean) ** 2).sum())
    b = float(((u - u_mean) * (y - y.mean())).sum() / sxx)
    a = float(y.mean() - b * u_mean)
    resid = y - (a + b * u)
    measurement = np.array([((d.high - d.low) / (2 * Z95)) ** 2 for d in pts])
    floor = max(_granularity(d) for d in pts) ** 2
    sigma2 = max(float((resid ** 2).sum() / (n - 2)), float(measurement.mean()), floor)
    df = n - 2
    current = pts[-1]
    level = threshold + max(0.0, current.drop - current.low)

    k = np.arange(1, horizon + 1, dtype=np.float64)
    mu = a + b * k
    sd = np.sqrt(sigma2 * (1 + 1 / n + (k - u_mean) ** 2 / sxx))
    probability = float(np.max(stats.t.sf((level - mu) / sd, df)))

    to_cross = lo = hi = None
    se_b = math.sqrt(sigma2 / sxx)
    t80 = float(stats.t.ppf(0.9, df))
    if b > 0:
        to_cross = max(0.0, (level - a) / b)
        fast, slow = b + t80 * se_b, b - t80 * se_b
        lo = max(0.0, (level - a) / fast)
        hi = max(0.0, (level - a) / slow) if slow > 0 else None
    return CrossingForecast(True, probability, horizon, n_points=n, slope_per_checkpoint=b,
                            checkpoints_to_crossing=to_cross, checkpoints_to_crossing_low=lo,
                            checkpoints_to_crossing_high=hi, steps_per_checkpoint=spacing)


def no_change_ceiling(*, threshold: float, horizon: int = 3, window: int = 6, min_points: int = 3) -> float:
    """The largest forecast a run whose ood probes have not changed at all (every drop 0 with a zero-width
    interval) gets on any probe set the forecast accepts; an alarm threshold above it never alarms on such
    a run. It is reached on the coarsest accepted set (the fewest right answers at the base that are not
    ``too_coarse``: its granularity is the noise floor) with the fewest points (one degree of freedom)."""
    _check_threshold(threshold)
    right = math.ceil(Z95 / threshold)  # 0.5 / right <= threshold / (2 z): the coarsest accepted set
    flat = RelativeDrop("no_change", "accuracy", 0.0, 0.0, 0.0, 1.0, right)
    forecasts = (forecast_detection([float(i) for i in range(k)], [flat] * k, threshold=threshold, horizon=horizon,
                                    window=window, min_points=min_points) for k in range(min_points, window + 1))
    return max(f.probability for f in forecasts if f.probability is not None)
