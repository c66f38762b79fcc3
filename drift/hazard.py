"""A discrete-time hazard model of forgetting onset, fitted on the risk set. ``hazard/3`` is the forecast
the service serves (`FittedHazard`, shipped in ``service/shipped_calibration.json``); hazard/1 and
hazard/2 are evaluated alternatives.

Rows are the checkpoints of a run before its ground-truth onset where the trend forecast applied
(at least 3 measured checkpoints, nothing detected). A row's event is "the onset is the next
checkpoint"; runs that never forgot contribute their rows as censored (no event). The hazard
``h = P(onset at t + 1 | no onset by t, x_t)`` is a logistic regression (Singer & Willett 1993;
Allison 1982) on dimensionless inputs (`INPUTS`):

- ``hazard/1``: the measured relative drop, its least-squares slope per checkpoint over the last 6
  measured checkpoints, and ln(number of measured checkpoints);
- ``hazard/2``: the same plus ln(1 + ood KL as a share of the base's entropy) and its slope, so a
  model whose answers still hold but whose distribution on the old skill has started to move can
  be told from one that has not moved at all;
- ``hazard/3``: the drops in units of their own noise: the gap from the current drop to the
  forgetting threshold over the drop's standard deviation (`drift.alarms.drop_sd`), the slope's
  t-statistic (slope over its standard error from the points' spreads) and ln(number of measured
  checkpoints). hazard/1 reads a 2 % drop the same on 32 items as on 256, so answer churn on a probe
  set looks like forgetting to it; hazard/3 reads how many standard deviations of the probe set's own
  noise separate the run from the threshold and how sure its trend is.

With the inputs held at their current values, ``P(onset within H) = 1 − (1 − h)^H``.

Beyond the range an input was fitted on, the model never extrapolates: the input is clamped to the
range's edge. The logit is linear in each input, so the clamped score bounds the extrapolated one. On
the side where the hazard falls (a run further from the threshold, more checkpoints behind it, a trend
more surely flat than any fitted row) it is an upper bound: clamping can add an alarm, never hide one.
On the side where it rises (a decline surer than any fitted one, a drop further past the threshold) it
is a lower bound, said so in the forecast's ``reason``: at least that probability, an alarm only when
even that reaches the threshold, and detection pages soon after. Missing or non-finite inputs give no
score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from drift.alarms import REASONS, CrossingForecast, RelativeDrop, drop_sd
from drift.evaluation import RunTrace
from drift.features import DROP_SLOPE_T, GAP_Z, LOG_CHECKPOINTS

__all__ = ["INPUTS", "PRIOR_PRECISION", "FittedHazard", "HazardModel", "hazard_forecast", "hazard_rows", "inputs_at",
           "no_change_ceiling"]

WINDOW = 6
Inputs = Literal["hazard/1", "hazard/2", "hazard/3"]
INPUTS: dict[str, tuple[str, ...]] = {
    "hazard/1": ("drop", "drop_slope", "log_checkpoints"),
    "hazard/2": ("drop", "drop_slope", "log_checkpoints", "log1p_kl_share", "log1p_kl_share_slope"),
    "hazard/3": (GAP_Z.name, DROP_SLOPE_T.name, LOG_CHECKPOINTS.name),  # the served model: declared features
}


def _slope(points: list[tuple[int, float]]) -> float:
    x = np.array([j for j, _ in points], dtype=np.float64)
    return float(np.polyfit(x, np.array([v for _, v in points]), 1)[0])


def _noise_scaled(drop: Sequence[float | None], sd: Sequence[float | None], i: int,
                  threshold: float) -> list[float] | None:
    """hazard/3's gap to ``threshold`` in standard deviations and the slope's t-statistic at checkpoint ``i``."""
    points = [(j, d, s) for j, (d, s) in enumerate(zip(drop[:i + 1], sd[:i + 1], strict=True))
              if d is not None and s is not None][-WINDOW:]
    if len(points) < 3 or points[-1][0] != i or min(s for _, _, s in points) <= 0:
        return None
    x = np.array([j for j, _, _ in points], dtype=np.float64)
    slope = _slope([(j, d) for j, d, _ in points])
    se = math.sqrt(float(np.mean([s ** 2 for _, _, s in points])) / float(((x - x.mean()) ** 2).sum()))
    return [(threshold - points[-1][1]) / points[-1][2], slope / se]


def inputs_at(drop: Sequence[float | None], sd: Sequence[float | None], kl_share: Sequence[float | None], i: int, *,
              inputs: Inputs, threshold: float) -> list[float] | None:
    """The model's inputs at checkpoint ``i`` from the per-checkpoint drops, their standard deviations
    (hazard/3) and ood KL shares (hazard/2), None where they cannot be formed."""
    measured = [(j, d) for j, d in enumerate(drop[:i + 1]) if d is not None][-WINDOW:]
    if len(measured) < 3:
        return None
    n_measured = sum(d is not None for d in drop[:i + 1])
    x = [measured[-1][1], _slope(measured), math.log(n_measured)]
    if inputs == "hazard/3":
        if not sd:
            raise ValueError("hazard/3 needs the drops' spreads (RunTrace.drop_sd)")
        scaled = _noise_scaled(drop, sd, i, threshold)
        return None if scaled is None else [*scaled, math.log(n_measured)]
    if inputs == "hazard/2":
        moved = [(j, math.log1p(k)) for j, k in enumerate(kl_share[:i + 1]) if k is not None][-WINDOW:]
        if len(moved) < 3 or kl_share[i] is None:
            return None
        x += [moved[-1][1], _slope(moved)]
    return x


def hazard_rows(trace: RunTrace, *, inputs: Inputs = "hazard/1", through_onset: bool = False,
                threshold: float = 0.1) -> list[tuple[int, list[float], int]]:
    """(checkpoint index, inputs, event) of the trace's rows with an applicable forecast: the risk set
    (before the onset), or with ``through_onset`` every such checkpoint (for scoring). ``threshold`` is
    the relative drop that counts as forgetting (hazard/3's gap is measured to it)."""
    if inputs == "hazard/3" and not trace.drop_sd:
        raise ValueError(f"run {trace.run}: hazard/3 needs the drops' spreads (RunTrace.drop_sd)")
    rows = []
    last = len(trace.forecast) - 1 if through_onset or trace.onset is None else trace.onset - 1
    for i in range(last + 1):
        if trace.forecast[i] is None:
            continue
        x = inputs_at(trace.drop, trace.drop_sd, trace.kl_share, i, inputs=inputs, threshold=threshold)
        if x is not None:
            rows.append((i, x, int(trace.onset == i + 1)))
    return rows


@dataclass(frozen=True)
class FittedHazard:
    """A fitted hazard model as numbers (the standardization, the logistic coefficients) and the range of
    each input over the rows it was fitted on: enough to score without scikit-learn, and to ship as JSON."""

    inputs: str
    threshold: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    low: tuple[float, ...]
    high: tuple[float, ...]
    n_rows: int
    n_events: int

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {sorted(INPUTS)}, got {self.inputs!r}")
        n = len(INPUTS[self.inputs])
        vectors = (self.mean, self.scale, self.coef, self.low, self.high)
        if any(len(v) != n for v in vectors):
            raise ValueError(f"{self.inputs} has {n} inputs; every vector of the model needs {n} numbers")
        numbers = [self.threshold, self.intercept, *(x for v in vectors for x in v)]
        if not all(isinstance(x, int | float) and math.isfinite(x) for x in numbers):
            raise ValueError("a hazard model's parameters must be finite numbers")
        if min(self.scale) <= 0 or any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError("a hazard model needs positive scales and low <= high for every input")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> FittedHazard:
        try:
            return cls(inputs=document["inputs"], threshold=float(document["threshold"]),
                       intercept=float(document["intercept"]), n_rows=int(document["n_rows"]),
                       n_events=int(document["n_events"]),
                       **{k: tuple(float(x) for x in document[k]) for k in ("mean", "scale", "coef", "low", "high")})
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a hazard model: {error!r} missing or malformed") from None

    def probability(self, x: Sequence[float], *, horizon: int) -> tuple[float | None, str | None]:
        """P(onset within ``horizon`` checkpoints) at inputs ``x`` and a note: why there is no score (a
        non-finite input), or that it is a lower bound (an input beyond its fitted range on the side where
        the hazard rises; module docstring); None when neither."""
        names = INPUTS[self.inputs]
        clamped, beyond = [], []
        for name, v, lo, hi, w in zip(names, x, self.low, self.high, self.coef, strict=True):
            if not math.isfinite(v):
                return None, f"{name} is not finite"
            edge = min(max(v, lo), hi)
            if w * (v - edge) > 0:
                beyond.append(f"{name} {v:.3g} beyond the fitted range [{lo:.3g}, {hi:.3g}]")
            clamped.append(edge)
        z = self.intercept + sum(w * (v - m) / s for v, m, s, w in zip(clamped, self.mean, self.scale, self.coef,
                                                                          strict=True))
        h = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        note = f"a lower bound: {', '.join(beyond)}, where the hazard would rise further" if beyond else None
        return 1.0 - (1.0 - h) ** horizon, note


PRIOR_PRECISION = 20.0
"""How firmly a refit holds to the model it is shrunk toward: a Gaussian prior on the standardized
coefficients and the intercept, centred on that model's, with this precision (1 / variance). A fit's
information on a coefficient grows with its onsets (roughly their number times the input's spread over
them), so a few labelled runs with one or two onsets move the model a little, and a few hundred onsets
almost entirely."""


class HazardModel:
    """Standardized L2 logistic regression of the discrete-time hazard; ``model`` is the fit as numbers.

    With ``toward`` (a fitted model, e.g. the shipped one) the fit is shrunk toward it instead of toward
    zero: a maximum a posteriori fit under a Gaussian prior centred on its coefficients
    (``precision``, `PRIOR_PRECISION` by default), on its standardization, so a refit on a user's few runs
    starts from what the shipped corpus taught rather than from nothing."""

    def __init__(self, *, inputs: Inputs = "hazard/1", C: float = 1.0, threshold: float = 0.1,
                 toward: FittedHazard | None = None, precision: float = PRIOR_PRECISION) -> None:
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {sorted(INPUTS)}, got {inputs!r}")
        if toward is not None and toward.inputs != inputs:
            raise ValueError(f"a {inputs} model cannot be shrunk toward a {toward.inputs} one")
        self.inputs = inputs
        self.threshold = threshold
        self.C = C
        self.toward = toward
        self.precision = precision
        self.model: FittedHazard | None = None

    @classmethod
    def of(cls, model: FittedHazard) -> HazardModel:
        """A model already fitted (e.g. the shipped one)."""
        fitted = cls(inputs=model.inputs, threshold=model.threshold)  # type: ignore[arg-type]
        fitted.model = model
        return fitted

    def fit(self, traces: Sequence[RunTrace]) -> HazardModel:
        return self.fit_rows([r for t in traces for r in hazard_rows(t, inputs=self.inputs, threshold=self.threshold)])

    def fit_rows(self, rows: Sequence[tuple[int, list[float], int]]) -> HazardModel:
        """Fit on `hazard_rows` already computed (a leave-one-out loop computes each run's once)."""
        if self.toward is not None:
            return self._shrunk(rows, self.toward)
        y = np.array([e for _, _, e in rows])
        if len(rows) == 0 or y.min() == y.max():
            raise ValueError(f"the risk set needs events and non-events, got {int(y.sum())} of {len(rows)} rows")
        from sklearn.linear_model import LogisticRegression  # imported here: scoring needs numbers only
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.array([x for _, x, _ in rows])
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=500)).fit(x, y)
        scaler, logistic = pipeline.named_steps["standardscaler"], pipeline.named_steps["logisticregression"]
        self.model = FittedHazard(
            inputs=self.inputs, threshold=self.threshold, mean=tuple(map(float, scaler.mean_)),
            scale=tuple(map(float, scaler.scale_)), coef=tuple(map(float, logistic.coef_[0])),
            intercept=float(logistic.intercept_[0]), low=tuple(map(float, x.min(axis=0))),
            high=tuple(map(float, x.max(axis=0))), n_rows=len(rows), n_events=int(y.sum()))
        return self

    def _shrunk(self, rows: Sequence[tuple[int, list[float], int]], prior: FittedHazard) -> HazardModel:
        from scipy.optimize import minimize  # imported here: scoring needs numbers only
        from scipy.special import expit

        n = len(prior.coef)
        x = np.array([x for _, x, _ in rows], dtype=np.float64).reshape(len(rows), n)
        y = np.array([e for _, _, e in rows], dtype=np.float64)
        design = np.column_stack([np.ones(len(rows)), (x - np.array(prior.mean)) / np.array(prior.scale)])
        centre = np.array([prior.intercept, *prior.coef])

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            eta = design @ theta
            away = theta - centre
            loss = float(np.sum(np.logaddexp(0.0, eta) - y * eta)) + 0.5 * self.precision * float(away @ away)
            return loss, design.T @ (expit(eta) - y) + self.precision * away

        theta = minimize(objective, centre, jac=True, method="L-BFGS-B").x
        low = np.minimum(prior.low, x.min(axis=0)) if len(rows) else np.array(prior.low)
        high = np.maximum(prior.high, x.max(axis=0)) if len(rows) else np.array(prior.high)
        self.model = replace(prior, threshold=self.threshold, intercept=float(theta[0]),
                             coef=tuple(map(float, theta[1:])), low=tuple(map(float, low)),
                             high=tuple(map(float, high)), n_rows=prior.n_rows + len(rows),
                             n_events=prior.n_events + int(y.sum()))
        return self

    def within(self, trace: RunTrace, *, horizon: int, through_onset: bool = False) -> dict[int, float]:
        """P(onset within ``horizon`` checkpoints) at each risk-set row of ``trace`` (every row with
        ``through_onset``) where the model does not abstain, by index."""
        if self.model is None:
            raise ValueError("HazardModel is not fitted")
        scores = {}
        for i, x, _ in hazard_rows(trace, inputs=self.inputs, through_onset=through_onset, threshold=self.threshold):
            p, _ = self.model.probability(x, horizon=horizon)
            if p is not None:
                scores[i] = p
        return scores

    def scored(self, trace: RunTrace, *, horizon: int) -> RunTrace:
        """``trace`` with its forecast replaced by this model's, None where the model abstains."""
        scores = self.within(trace, horizon=horizon, through_onset=True)
        return replace(trace, forecast=tuple(scores.get(i) for i in range(len(trace.forecast))))


def hazard_forecast(trend: CrossingForecast, drops: Sequence[RelativeDrop | None], model: FittedHazard, *,
                    horizon: int) -> CrossingForecast:
    """The served forecast at the last of ``drops`` (one per checkpoint after the base, None where
    unmeasured): ``trend`` (`drift.alarms.forecast_detection` on the same drops) with its probability
    replaced by the hazard model's. The trend's abstentions stand (the model was fitted only where the
    trend applied); its steps-to-crossing estimate is kept as the expected time."""
    if not trend.applicable:
        return replace(trend, model=model.inputs)
    values = [None if d is None else d.drop for d in drops]
    spreads = [None if d is None else drop_sd(d) for d in drops]
    x = inputs_at(values, spreads, [None] * len(drops), len(drops) - 1, inputs=model.inputs,  # type: ignore[arg-type]
                  threshold=model.threshold)
    p, note = (None, "its last 3 measured checkpoints have no spread") if x is None else model.probability(x, horizon=horizon)
    if p is None:
        return replace(trend, applicable=False, probability=None, model=model.inputs, reason_code="non_finite",
                       reason=f"{REASONS['non_finite']}: {note}")
    return replace(trend, probability=p, model=model.inputs, reason=note)


def no_change_ceiling(model: FittedHazard, *, horizon: int, window: int = WINDOW, most_checkpoints: int = 200,
                      most_right: int = 100_000) -> float:
    """The largest score a run whose ood probes have not changed at all (every drop 0, zero-width
    intervals, so each drop's spread is half an item) gets from ``model`` on any probe set the trend
    accepts, at any checkpoint up to ``most_checkpoints``: an alarm threshold above it never alarms on
    such a run. The gap grows with the base's right answers, so the scan covers the coarsest accepted set
    (`drift.alarms.no_change_ceiling`'s) up to ``most_right``, doubling."""
    from drift.alarms import Z95

    right = math.ceil(Z95 / model.threshold)
    best = 0.0
    while right <= most_right:
        flat = RelativeDrop("no_change", "accuracy", 0.0, 0.0, 0.0, 1.0, right)
        for k in range(3, most_checkpoints + 1):
            drop = [0.0] * k
            sd = [drop_sd(flat)] * k
            x = inputs_at(drop, sd, [None] * k, k - 1, inputs=model.inputs,  # type: ignore[arg-type]
                          threshold=model.threshold)
            p = None if x is None else model.probability(x, horizon=horizon)[0]
            best = max(best, p or 0.0)
        right *= 2
    return best
