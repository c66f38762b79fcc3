"""The hazard model judged the way a model that never saw a run is: each run scored by a fit without it
(`leave_one_out`), or each family or method by a fit on the others with its own conformal alarm threshold
(`held_out_alarms`, `held_out_auc`). The model itself is `drift.hazard`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from drift.evaluation import HeldOut, RunTrace, alarm_threshold, evaluate
from drift.hazard import FittedHazard, HazardModel, Inputs, hazard_rows, no_change_ceiling

__all__ = ["held_out_alarms", "held_out_auc", "leave_one_out", "quiet_maxima"]


def _max(trace: RunTrace) -> float:
    return max((p for p in trace.forecast if p is not None), default=0.0)


def leave_one_out(traces: Sequence[RunTrace], *, inputs: Inputs, horizon: int, threshold: float,
                  only_quiet: bool = False, toward: FittedHazard | None = None) -> list[RunTrace]:
    """Each run (with ``only_quiet``, each that never forgot) scored by a model fitted on the others (shrunk
    ``toward`` a fitted model when given); a run whose others hold no event or no non-event is not scored
    (every forecast None)."""
    rows = [hazard_rows(t, inputs=inputs, threshold=threshold) for t in traces]
    scored = []
    for k, run in enumerate(traces):
        if only_quiet and run.onset is not None:
            continue
        try:
            without = HazardModel(inputs=inputs, threshold=threshold, toward=toward).fit_rows(
                [r for j, rs in enumerate(rows) if j != k for r in rs])
        except ValueError:
            scored.append(replace(run, forecast=(None,) * len(run.forecast)))
            continue
        scored.append(without.scored(run, horizon=horizon))
    return scored


def quiet_maxima(traces: Sequence[RunTrace], *, inputs: Inputs, horizon: int, threshold: float) -> list[float]:
    """The largest score of each run that never forgot, each from a model fitted without it (leave one
    run out), so no maximum that sets a threshold is in-sample."""
    return [_max(t) for t in leave_one_out(traces, inputs=inputs, horizon=horizon, threshold=threshold,
                                           only_quiet=True)]


def held_out_alarms(traces: Sequence[RunTrace], *, by: str, inputs: Inputs = "hazard/2", alpha: float = 0.10,
                    horizon: int = 3, threshold: float = 0.1, floor: bool = False) -> HeldOut | None:
    """The alarm record of the hazard model, leaving one group (``by``: "family" or "method") out.

    Each group's runs are scored by a model fitted on the other groups; their alarm threshold is
    conformal on the other groups' non-forgetting runs (`quiet_maxima`), and with ``floor`` never below
    that model's `no_change_ceiling` (as the service sets it). None when fewer than two groups, or no
    group's training runs hold both events and non-events."""
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
        assert model.model is not None
        ceiling = no_change_ceiling(model.model, horizon=horizon) if floor else 0.0
        alarm = alarm_threshold(quiet_maxima(train, inputs=inputs, horizon=horizon, threshold=threshold),
                                alpha=alpha, floor=ceiling)
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
