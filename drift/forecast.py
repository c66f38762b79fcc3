"""Trends of checkpoint series: forecasts, change points, and the per-checkpoint trend features.

- `theil_sen_forecast`: a robust straight line through ``(step, value)`` (the Theil–Sen slope is
  the median of all pairwise slopes, Sen 1968; `scipy.stats.theilslopes`), extrapolated to the
  step at which it crosses a threshold. One wild checkpoint moves it little (breakdown ≈ 29 %).
- `page_hinkley`: the Page–Hinkley test for a shift in the mean (Page 1954; Hinkley 1971; the
  online form in Gama et al. 2014, "A survey on concept drift adaptation", §3.2). Chosen over a
  two-sided CUSUM because it needs no pre-change mean: each deviation is taken from the running
  mean, which suits short series with no known "normal" level. One direction per call.
- `feature_rows`: per checkpoint, the measurements plus recent Theil–Sen slopes and ratios to the
  first checkpoint (the risk model's inputs; feature keys in the constants below).

Page–Hinkley works on standardized values so that ``delta`` and ``threshold`` are in units of the
series' own noise. The running mean makes the test shift-invariant, so only a scale is needed:
``s = max(1.4826 · MAD(Δx) / √2, REL_SCALE_FLOOR · |median(x)|, min_scale)`` with ``Δx`` the
first differences. Differencing removes a level shift (one large difference barely moves the
MAD) and a linear trend (MAD is taken around the median difference), so the estimate uses every
point yet stays robust to the change being looked for. The first version took the MAD of the
first five or ten values instead; on N(0, 1) noise it gave 9–19 % false alarms at
``delta=0.5, threshold=8`` (500 seeds, 15–100 points) against 1.6–4 % with differences and
0–0.8 % with the true scale. The floor keeps a constant series from turning rounding noise into
alarms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Measurement keys per engine (more may appear; absent keys and None values are tolerated).
PARAM_FEATURES = ("param_rel_l2", "param_rel_l2_max_block", "param_nss", "param_update_cosine")
PROBE_FEATURES = ("kl_fwd_ood", "kl_rev_ood", "kl_fwd_ood_p90", "kl_fwd_ood_p10", "kl_fwd_in", "kl_rev_in",
                  "kl_fwd_in_p90", "entropy_in", "entropy_ood", "loglik_change_ood", "acc_change_ood",
                  "acc_change_in", "agreement_ood")
RESPONSE_FEATURES = ("embed_mmd", "embed_auc", "embed_similarity_p25", "distinct2", "distinct2_base",
                     "repetition_ratio", "sample_entropy")
#: Non-negative quantities for which "× the first checkpoint" means something; each gets
#: ``<name>_log_ratio_first``. Signed changes (``*_change_*``), cosines and AUCs do not.
RATIO_FEATURES = ("kl_fwd_ood", "kl_rev_ood", "kl_fwd_ood_p90", "kl_fwd_ood_p10", "kl_fwd_in", "kl_rev_in",
                  "kl_fwd_in_p90", "param_rel_l2", "param_rel_l2_max_block", "param_nss", "entropy_in",
                  "entropy_ood", "sample_entropy", "distinct2", "embed_mmd", "repetition_ratio")
NO_SLOPE = ("distinct2_base",)
#: Row keys that describe the checkpoint rather than measure it; never model inputs.
META_KEYS = ("step", "n_checkpoints")
#: A first value at or below this is treated as zero: no ratio to it.
RATIO_MIN_FIRST = 1e-9
#: log ratios are clipped to ±ln(1000).
LOG_RATIO_CLIP = math.log(1000.0)
SLOPE_PER_STEPS = 1000.0

#: Smallest noise scale relative to the series level: the series must move by at least 1 % of
#: its median, per standardized unit, before the Page–Hinkley statistic grows.
REL_SCALE_FLOOR = 0.01
#: 1.4826 · MAD estimates the standard deviation of normal data.
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Forecast:
    """A Theil–Sen line ``value ≈ intercept + slope · step`` and when it reaches a threshold.

    ``steps_to_threshold`` counts training steps after ``last_step``: 0.0 when ``crossed`` (the
    last observed value is already at or past the threshold) or the fitted line is already past
    it; None when the trend is flat or moving away from the threshold, or fewer than
    ``min_points`` finite points were given.
    """

    slope: float  # value units per training step
    intercept: float
    last_step: float
    steps_to_threshold: float | None
    crossed: bool
    n_points: int


@dataclass(frozen=True)
class ChangePoint:
    """Page–Hinkley result. ``index`` is the estimated first index of the new regime (the best
    single mean-shift split of the values up to the alarm), ``alarm_index`` the index at which the
    statistic first exceeded the threshold; both None without an alarm. ``statistic`` is the
    largest value the test statistic reached, in robust standard deviations; ``scale`` the robust
    noise scale used to standardize (value units; 0.0 with fewer than two values)."""

    index: int | None
    alarm_index: int | None
    statistic: float
    scale: float


def _check_direction(direction: str) -> int:
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
    return 1 if direction == "up" else -1


def _as_float_array(values: Sequence[float | None], name: str) -> np.ndarray:
    try:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers or None: {exc}") from None


def theil_sen_forecast(
    steps: Sequence[float],
    values: Sequence[float | None],
    *,
    threshold: float,
    direction: str = "up",
    min_points: int = 3,
) -> Forecast:
    """Fit a Theil–Sen line to ``(steps, values)`` and extrapolate to ``threshold``.

    ``direction="up"`` means the danger is ``value >= threshold`` (e.g. KL); ``"down"`` means
    ``value <= threshold`` (e.g. accuracy). Pairs whose value is None or not finite are dropped.
    ``steps_to_threshold = (threshold − ŷ(last_step)) / slope`` when the slope points toward the
    threshold. The intercept is ``median(y − slope · x)`` (scipy's ``method="joint"``), which,
    unlike ``median(y) − slope · median(x)``, one outlier cannot shift. Steps must be strictly
    increasing.
    """
    sign = _check_direction(direction)
    if min_points < 2:
        raise ValueError(f"min_points must be at least 2, got {min_points}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    x = _as_float_array(steps, "steps")
    y = _as_float_array(values, "values")
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"steps and values must be 1-d of equal length, got {len(x)} and {len(y)}")
    if not np.all(np.isfinite(x)) or np.any(np.diff(x) <= 0):
        raise ValueError(f"steps must be finite and strictly increasing, got {list(steps)}")
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(y) == 0:
        raise ValueError("no finite values to forecast from")

    if len(y) >= 2:
        slope, intercept, _, _ = stats.theilslopes(y, x, method="joint")
        slope, intercept = float(slope), float(intercept)
    else:
        slope, intercept = 0.0, float(y[0])
    last_step = float(x[-1])
    crossed = bool(sign * (y[-1] - threshold) >= 0)

    to_threshold: float | None
    if crossed:
        to_threshold = 0.0
    elif len(y) < min_points or sign * slope <= 0:
        to_threshold = None
    else:
        fitted_last = intercept + slope * last_step
        to_threshold = max(0.0, (threshold - fitted_last) / slope)
    return Forecast(slope=slope, intercept=intercept, last_step=last_step,
                    steps_to_threshold=to_threshold, crossed=crossed, n_points=len(y))


def robust_noise_scale(x: np.ndarray, *, min_scale: float = 1e-12) -> float:
    """Noise scale of a 1-d finite series from its first differences (module docstring)."""
    if len(x) < 2:
        raise ValueError(f"robust_noise_scale needs at least two values, got {len(x)}")
    d = np.diff(x)
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(MAD_TO_SD * mad / float(np.sqrt(2.0)), REL_SCALE_FLOOR * abs(float(np.median(x))), min_scale)


def page_hinkley(
    values: Sequence[float | None],
    *,
    delta: float,
    threshold: float,
    direction: str = "up",
    min_scale: float = 1e-12,
) -> ChangePoint:
    """Page–Hinkley test for a shift of the mean in one direction.

    On standardized values ``z = x / s`` (module docstring), for ``direction="up"``::

        z̄_t = mean(z_0..z_t)
        m_t = Σ_{i≤t} (z_i − z̄_i − delta)        (each term uses the running mean at time i)
        PH_t = m_t − min_{i≤t} m_i                 alarm at the first t with PH_t > threshold

    The onset is then estimated from ``z_0..z_alarm`` as the maximum-likelihood split for one
    upward mean shift (Hinkley 1970): ``argmax_k (mean(z_k..) − mean(z_..k−1)) · √(k(m−k)/m)``.
    The last minimum of ``m`` is the textbook estimate but drifts several points early, since
    before the change ``m`` falls only by ``delta`` per point against unit noise.

    ``"down"`` negates z. ``delta`` (tolerated drift per point) and ``threshold`` are in robust
    standard deviations. None/non-finite values are skipped; returned indices refer to the
    positions in ``values``. Fewer than two finite values give no alarm.
    """
    sign = _check_direction(direction)
    if delta < 0 or threshold <= 0:
        raise ValueError(f"need delta >= 0 and threshold > 0, got delta={delta}, threshold={threshold}")
    raw = _as_float_array(values, "values")
    positions = np.flatnonzero(np.isfinite(raw))
    x = raw[positions]
    if len(x) < 2:
        return ChangePoint(index=None, alarm_index=None, statistic=0.0, scale=0.0)
    scale = robust_noise_scale(x, min_scale=min_scale)
    z = sign * x / scale

    running_mean = np.cumsum(z) / np.arange(1, len(z) + 1)
    m = np.cumsum(z - running_mean - delta)  # (n,)
    m_min = np.minimum.accumulate(np.minimum(m, 0.0))  # m_{-1} = 0 before the first point
    ph = m - m_min
    alarms = np.flatnonzero(ph > threshold)
    if len(alarms) == 0:
        return ChangePoint(index=None, alarm_index=None, statistic=float(ph.max()), scale=scale)
    alarm = int(alarms[0])
    onset = _mean_shift_onset(z[:alarm + 1])

    return ChangePoint(index=int(positions[onset]), alarm_index=int(positions[alarm]),
                       statistic=float(ph.max()), scale=scale)


def _mean_shift_onset(z: np.ndarray) -> int:
    """First index of the later segment in the best single upward mean-shift split of z."""
    m = len(z)
    if m < 2:
        return m - 1
    k = np.arange(1, m)  # size of the earlier segment
    csum = np.cumsum(z)
    before = csum[:-1] / k
    after = (csum[-1] - csum[:-1]) / (m - k)
    score = (after - before) * np.sqrt(k * (m - k) / m)
    return int(k[np.argmax(score)])


def finite_or_none(value: object) -> float | None:
    """``float(value)`` if it is a finite real number (not a bool), else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _nan_if_none(v: float | None) -> float:
    return np.nan if v is None else v


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Theil–Sen slope (median of pairwise slopes; equals `scipy.stats.theilslopes`)."""
    i, j = np.triu_indices(len(x), k=1)
    return float(np.median((y[j] - y[i]) / (x[j] - x[i])))


def feature_rows(
    history: Sequence[Mapping[str, float | None]], steps: Sequence[int], *, window: int = 4
) -> list[dict[str, float]]:
    """One feature dict per checkpoint, using only checkpoints up to and including it.

    Each row holds every finite numeric measurement of the checkpoint (others are skipped, not
    imputed: the model fills absent features with its stored training medians), plus
    ``step`` and ``n_checkpoints`` (t + 1, meta keys), and:

    - ``<name>_slope``: Theil–Sen slope per 1000 steps over the last ``window`` checkpoints
      (finite points only, at least 2);
    - ``<name>_log_ratio_first`` for `RATIO_FEATURES`: ln(value / first finite value of the run),
      clipped to ±ln 1000, when the first value exceeds `RATIO_MIN_FIRST`;
    - ``distinct2_ratio_base``: distinct2 / distinct2_base when the base value is positive.
    """
    if len(history) != len(steps):
        raise ValueError(f"history and steps differ in length: {len(history)} vs {len(steps)}")
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window}")
    x_all = np.asarray(steps, dtype=np.float64)
    if np.any(np.diff(x_all) <= 0):
        raise ValueError(f"steps must be strictly increasing, got {list(steps)}")
    names = sorted({k for h in history for k, v in h.items() if finite_or_none(v) is not None and k not in META_KEYS})
    table = {n: np.array([_nan_if_none(finite_or_none(h.get(n))) for h in history]) for n in names}
    rows: list[dict[str, float]] = []
    for t in range(len(history)):
        row: dict[str, float] = {"step": float(x_all[t]), "n_checkpoints": float(t + 1)}
        lo = max(0, t - window + 1)
        for n in names:
            col = table[n]
            if math.isfinite(col[t]):
                row[n] = float(col[t])
            if n not in NO_SLOPE:
                keep = np.isfinite(col[lo:t + 1])
                if keep.sum() >= 2:
                    row[f"{n}_slope"] = SLOPE_PER_STEPS * _slope(x_all[lo:t + 1][keep], col[lo:t + 1][keep])
            if n in RATIO_FEATURES and math.isfinite(col[t]):
                seen = col[:t + 1][np.isfinite(col[:t + 1])]
                if seen[0] > RATIO_MIN_FIRST:
                    ratio = math.log(max(col[t], RATIO_MIN_FIRST) / seen[0])
                    row[f"{n}_log_ratio_first"] = float(np.clip(ratio, -LOG_RATIO_CLIP, LOG_RATIO_CLIP))
        base = row.get("distinct2_base")
        if "distinct2" in row and base is not None and base > 0:
            row["distinct2_ratio_base"] = row["distinct2"] / base
        rows.append(row)
    return rows
