"""A discrete-time hazard model of forgetting onset, fitted on the risk set (an evaluated alternative
to the unfitted `drift.alarms` trend; the service does not serve it).

Rows are the checkpoints of a run before its ground-truth onset where the trend forecast applied
(at least 3 measured checkpoints, nothing detected). A row's event is "the onset is the next
checkpoint"; runs that never forgot contribute their rows as censored (no event). The hazard
``h = P(onset at t + 1 | no onset by t, x_t)`` is a logistic regression (Singer & Willett 1993;
Allison 1982) on three dimensionless inputs: the measured relative drop, its least-squares slope per
checkpoint over the last 6 measured checkpoints, and ln(number of measured checkpoints). With the
inputs held at their current values, ``P(onset within H) = 1 − (1 − h)^H``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from drift.evaluation import RunTrace

__all__ = ["HazardModel", "hazard_rows"]

WINDOW = 6


def hazard_rows(trace: RunTrace) -> list[tuple[int, list[float], int]]:
    """(checkpoint index, inputs, event) of the trace's risk-set rows with an applicable forecast."""
    rows = []
    last = trace.onset - 1 if trace.onset is not None else len(trace.forecast) - 1
    for i in range(last + 1):
        if trace.forecast[i] is None:
            continue
        measured = [(j, d) for j, d in enumerate(trace.drop[:i + 1]) if d is not None][-WINDOW:]
        if len(measured) < 3:
            continue
        x = np.array([j for j, _ in measured], dtype=np.float64)
        y = np.array([d for _, d in measured])
        slope = float(np.polyfit(x, y, 1)[0])
        n_measured = sum(d is not None for d in trace.drop[:i + 1])
        rows.append((i, [float(y[-1]), slope, math.log(n_measured)], int(trace.onset == i + 1)))
    return rows


class HazardModel:
    """Standardized L2 logistic regression of the discrete-time hazard."""

    def __init__(self, *, C: float = 1.0) -> None:
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500))
        self.fitted = False

    def fit(self, traces: Sequence[RunTrace]) -> HazardModel:
        rows = [r for t in traces for r in hazard_rows(t)]
        y = np.array([e for _, _, e in rows])
        if len(rows) == 0 or y.min() == y.max():
            raise ValueError(f"the risk set needs events and non-events, got {int(y.sum())} of {len(rows)} rows")
        self.pipeline.fit(np.array([x for _, x, _ in rows]), y)
        self.fitted = True
        return self

    def within(self, trace: RunTrace, *, horizon: int) -> dict[int, float]:
        """P(onset within ``horizon`` checkpoints) at each risk-set row of ``trace``, by index."""
        if not self.fitted:
            raise ValueError("HazardModel is not fitted")
        rows = hazard_rows(trace)
        if not rows:
            return {}
        h = self.pipeline.predict_proba(np.array([x for _, x, _ in rows]))[:, 1]
        return {i: float(1 - (1 - p) ** horizon) for (i, _, _), p in zip(rows, h, strict=True)}


def held_out_auc(traces: Sequence[RunTrace], *, by: str, horizon: int = 3) -> tuple[float | None, float | None, int]:
    """Leave one group (``by``: "family" or "method") out: fit on the others, score the held-out
    group's risk-set rows. Returns (hazard AUC, trend AUC on the same rows, rows scored); AUC at
    horizon ``horizon`` as in `drift.evaluation`. Groups whose training runs lack events are skipped."""
    from sklearn.metrics import roc_auc_score

    y, hazard, trend = [], [], []
    for group in sorted({getattr(t, by) for t in traces}):
        train = [t for t in traces if getattr(t, by) != group]
        try:
            model = HazardModel().fit(train)
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
