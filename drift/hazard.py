"""A discrete-time hazard model of forgetting onset, fitted on the risk set (an evaluated alternative
to the unfitted `drift.alarms` trend; the service does not serve it).

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from drift.evaluation import HeldOut, RunTrace, conformal_threshold, evaluate

__all__ = ["INPUTS", "HazardModel", "hazard_rows", "held_out_alarms", "held_out_auc"]

WINDOW = 6
Inputs = Literal["hazard/1", "hazard/2", "hazard/3"]
INPUTS: dict[str, tuple[str, ...]] = {
    "hazard/1": ("drop", "drop_slope", "log_checkpoints"),
    "hazard/2": ("drop", "drop_slope", "log_checkpoints", "log1p_kl_share", "log1p_kl_share_slope"),
    "hazard/3": ("gap_z", "drop_slope_t", "log_checkpoints"),
}


def _slope(points: list[tuple[int, float]]) -> float:
    x = np.array([j for j, _ in points], dtype=np.float64)
    return float(np.polyfit(x, np.array([v for _, v in points]), 1)[0])


def _noise_scaled(trace: RunTrace, i: int, threshold: float) -> list[float] | None:
    """hazard/3's gap to ``threshold`` in standard deviations and the slope's t-statistic at checkpoint ``i``."""
    if not trace.drop_sd:
        raise ValueError(f"run {trace.run}: hazard/3 needs the drops' spreads (RunTrace.drop_sd)")
    points = [(j, d, s) for j, (d, s) in enumerate(zip(trace.drop[:i + 1], trace.drop_sd[:i + 1], strict=True))
              if d is not None and s is not None][-WINDOW:]
    if len(points) < 3 or points[-1][0] != i or min(s for _, _, s in points) <= 0:
        return None
    x = np.array([j for j, _, _ in points], dtype=np.float64)
    slope = _slope([(j, d) for j, d, _ in points])
    se = math.sqrt(float(np.mean([s ** 2 for _, _, s in points])) / float(((x - x.mean()) ** 2).sum()))
    return [(threshold - points[-1][1]) / points[-1][2], slope / se]


def hazard_rows(trace: RunTrace, *, inputs: Inputs = "hazard/1", through_onset: bool = False,
                threshold: float = 0.1) -> list[tuple[int, list[float], int]]:
    """(checkpoint index, inputs, event) of the trace's rows with an applicable forecast: the risk set
    (before the onset), or with ``through_onset`` every such checkpoint (for scoring). ``threshold`` is
    the relative drop that counts as forgetting (hazard/3's gap is measured to it)."""
    rows = []
    last = len(trace.forecast) - 1 if through_onset or trace.onset is None else trace.onset - 1
    for i in range(last + 1):
        if trace.forecast[i] is None:
            continue
        measured = [(j, d) for j, d in enumerate(trace.drop[:i + 1]) if d is not None][-WINDOW:]
        if len(measured) < 3:
            continue
        n_measured = sum(d is not None for d in trace.drop[:i + 1])
        x = [measured[-1][1], _slope(measured), math.log(n_measured)]
        if inputs == "hazard/3":
            scaled = _noise_scaled(trace, i, threshold)
            if scaled is None:
                continue
            x = [*scaled, math.log(n_measured)]
        if inputs == "hazard/2":
            moved = [(j, math.log1p(k)) for j, k in enumerate(trace.kl_share[:i + 1]) if k is not None][-WINDOW:]
            if len(moved) < 3 or trace.kl_share[i] is None:
                continue
            x += [moved[-1][1], _slope(moved)]
        rows.append((i, x, int(trace.onset == i + 1)))
    return rows


class HazardModel:
    """Standardized L2 logistic regression of the discrete-time hazard."""

    def __init__(self, *, inputs: Inputs = "hazard/1", C: float = 1.0, threshold: float = 0.1) -> None:
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {sorted(INPUTS)}, got {inputs!r}")
        self.inputs = inputs
        self.threshold = threshold
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500))
        self.fitted = False

    def fit(self, traces: Sequence[RunTrace]) -> HazardModel:
        rows = [r for t in traces for r in hazard_rows(t, inputs=self.inputs, threshold=self.threshold)]
        y = np.array([e for _, _, e in rows])
        if len(rows) == 0 or y.min() == y.max():
            raise ValueError(f"the risk set needs events and non-events, got {int(y.sum())} of {len(rows)} rows")
        self.pipeline.fit(np.array([x for _, x, _ in rows]), y)
        self.fitted = True
        return self

    def within(self, trace: RunTrace, *, horizon: int, through_onset: bool = False) -> dict[int, float]:
        """P(onset within ``horizon`` checkpoints) at each risk-set row of ``trace`` (every row with
        ``through_onset``), by index."""
        if not self.fitted:
            raise ValueError("HazardModel is not fitted")
        rows = hazard_rows(trace, inputs=self.inputs, through_onset=through_onset, threshold=self.threshold)
        if not rows:
            return {}
        h = self.pipeline.predict_proba(np.array([x for _, x, _ in rows]))[:, 1]
        return {i: float(1 - (1 - p) ** horizon) for (i, _, _), p in zip(rows, h, strict=True)}

    def scored(self, trace: RunTrace, *, horizon: int) -> RunTrace:
        """``trace`` with its forecast replaced by this model's, None where the model abstains."""
        scores = self.within(trace, horizon=horizon, through_onset=True)
        return replace(trace, forecast=tuple(scores.get(i) for i in range(len(trace.forecast))))


def _max(trace: RunTrace) -> float:
    return max((p for p in trace.forecast if p is not None), default=0.0)


def held_out_alarms(traces: Sequence[RunTrace], *, by: str, inputs: Inputs = "hazard/2", alpha: float = 0.10,
                    horizon: int = 3, threshold: float = 0.1) -> HeldOut | None:
    """The alarm record of the hazard model, leaving one group (``by``: "family" or "method") out.

    Each group's runs are scored by a model fitted on the other groups; their alarm threshold is
    conformal on the other groups' non-forgetting runs, each scored by a model fitted without it
    (leave one run out), so no score that sets a threshold is in-sample. None when fewer than two
    groups, or no group's training runs hold both events and non-events."""
    groups = sorted({getattr(t, by) for t in traces})
    if len(groups) < 2:
        return None
    scored: list[RunTrace] = []
    thresholds: list[float | None] = []
    for group in groups:
        train = [t for t in traces if getattr(t, by) != group]
        try:
            model = HazardModel(inputs=inputs, threshold=threshold).fit(train)
        except ValueError:
            continue
        quiet = []
        for run in (t for t in train if t.onset is None):
            try:
                without = HazardModel(inputs=inputs, threshold=threshold).fit([t for t in train if t is not run])
                quiet.append(_max(without.scored(run, horizon=horizon)))
            except ValueError:
                continue
        alarm = conformal_threshold(quiet, alpha=alpha)
        for t in (t for t in traces if getattr(t, by) == group):
            scored.append(model.scored(t, horizon=horizon))
            thresholds.append(alarm)
    if not scored:
        return None
    return evaluate(scored, thresholds, horizon=horizon,
                    split=f"{inputs} leave-one-{by}-out ({len(groups)} groups)")


def held_out_auc(traces: Sequence[RunTrace], *, by: str, horizon: int = 3, inputs: Inputs = "hazard/1",
                 threshold: float = 0.1) -> tuple[float | None, float | None, int]:
    """Leave one group (``by``: "family" or "method") out: fit on the others, score the held-out
    group's risk-set rows. Returns (hazard AUC, trend AUC on the same rows, rows scored); AUC at
    horizon ``horizon`` as in `drift.evaluation`. Groups whose training runs lack events are skipped."""
    from sklearn.metrics import roc_auc_score

    y, hazard, trend = [], [], []
    for group in sorted({getattr(t, by) for t in traces}):
        train = [t for t in traces if getattr(t, by) != group]
        try:
            model = HazardModel(inputs=inputs, threshold=threshold).fit(train)
        except ValueError:
            continue
        for t in (t for t in traces if getattr(t, by) == group):
            last_observed = len(t.forecast) - 1 - horizon  # a quiet run's last H rows have no known future
            for i, p in model.within(t, horizon=horizon).items():
                if t.onset is None and i > last_observed:
                    continue
                y.append(int(t.onset is not None and t.onset - i <= horizon))
                hazard.append(p)
                trend.append(t.forecast[i])
    if len(set(y)) < 2:
        return None, None, len(y)
    return float(roc_auc_score(y, hazard)), float(roc_auc_score(y, trend)), len(y)
