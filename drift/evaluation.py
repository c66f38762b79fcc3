"""Held-out evaluation of the forgetting alarms against ground truth, and the conformal alarm threshold.

A run is a `RunTrace`: per checkpoint, what the service said (forecast probability or None when it
abstained, detected or not, the measured relative drop, ood KL as a share of the base's entropy) and
where its ground truth first fell 10 % below the base (``onset``; None: never). An *alarm* at a
checkpoint is a detection or a forecast at or above the threshold.

The alarm threshold is the split-conformal quantile of the largest forecast of each calibration run
that never forgot (Vovk et al. 2005; Angelopoulos & Bates 2021, §1): with ``n`` such runs, the
``⌈(n + 1)(1 − α)⌉``-th smallest maximum, so that a new exchangeable non-forgetting run has its
maximum above it with probability ≤ α. Fewer than ``⌈1/α⌉ − 1`` runs cannot give that guarantee:
the threshold is then None (no predicted alarm at all), never a silently relaxed one.

Metrics (`evaluate`), over runs held out from the threshold's calibration:

- ``auc_h3``: time-dependent ROC AUC at horizon H on the risk set: checkpoints before the run's
  onset (all of a non-forgetting run's, except the last H whose future is unobserved); positive when
  the onset is within the next H checkpoints. Only checkpoints where the forecast applied; the same
  checkpoints score ``persistence_auc`` (the current measured drop) and ``kl_auc`` (ood KL share);
- ``early2_share``: forgetting runs with onset at or after the 3rd checkpoint that alarmed at least
  2 checkpoints before it; ``median_lead_ckpts``: median of onset − first alarm over alarmed
  forgetting runs; ``false_alarm_runs``: non-forgetting runs that ever alarmed; ``detect_rate``:
  forgetting runs alarmed by onset + 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["HeldOut", "RunTrace", "alarm_threshold", "conformal_threshold", "evaluate", "first_alarm", "held_out",
           "refit", "risk_set", "scored_in_risk_set", "why_worse"]


@dataclass(frozen=True)
class RunTrace:
    run: str
    family: str
    method: str
    forecast: tuple[float | None, ...]
    detected: tuple[bool, ...]
    drop: tuple[float | None, ...]
    kl_share: tuple[float | None, ...]
    onset: int | None
    drop_sd: tuple[float | None, ...] = ()
    """Per checkpoint, the drop's standard deviation (`drift.alarms.drop_sd`); empty when not known."""

    def __post_init__(self) -> None:
        n = len(self.forecast)
        if not len(self.detected) == len(self.drop) == len(self.kl_share) == n:
            raise ValueError(f"run {self.run}: per-checkpoint sequences differ in length")
        if self.drop_sd and len(self.drop_sd) != n:
            raise ValueError(f"run {self.run}: drop spreads for {len(self.drop_sd)} of {n} checkpoints")
        if self.onset is not None and not 0 <= self.onset < n:
            raise ValueError(f"run {self.run}: onset {self.onset} outside its {n} checkpoints")


@dataclass(frozen=True)
class HeldOut:
    split: str
    families: int
    methods: int
    n_runs: int
    n_forgetting: int
    threshold: float | None
    auc_h3: float | None
    persistence_auc: float | None
    kl_auc: float | None
    risk_set_size: int
    forecast_coverage: float | None
    early2_share: float | None
    median_lead_ckpts: float | None
    false_alarm_runs: float | None
    detect_rate: float | None

    def line(self) -> str:
        def f(v: object) -> str:
            return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

        return (f"risk_heldout families={self.families} methods={self.methods} auc_h3={f(self.auc_h3)} "
                f"early2_share={f(self.early2_share)} median_lead_ckpts={f(self.median_lead_ckpts)} "
                f"false_alarm_runs={f(self.false_alarm_runs)} detect_rate={f(self.detect_rate)} "
                f"persistence_auc={f(self.persistence_auc)}")


def conformal_threshold(max_scores: Sequence[float], *, alpha: float = 0.10) -> float | None:
    """Smallest alarm threshold (alarm: score ≥ threshold) under which at most a share ``alpha`` of
    new non-forgetting runs alarm, from the maxima of ``n`` calibration runs; None when ``n`` is too
    small for the guarantee."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    scores = sorted(float(s) for s in max_scores)
    k = math.ceil((len(scores) + 1) * (1 - alpha))
    if k > len(scores):
        return None
    return float(np.nextafter(scores[k - 1], np.inf))  # strictly above the k-th maximum


def alarm_threshold(max_scores: Sequence[float], *, alpha: float = 0.10, floor: float = 0.0) -> float | None:
    """The conformal threshold (`conformal_threshold`), never below ``floor``: the forecast a run whose
    probes have not changed can reach (`drift.alarms.no_change_ceiling`), so that such a run never
    alarms whatever the calibration runs were. Raising a threshold only lowers false alarms, so the
    conformal bound still holds; None when the calibration runs are too few for it."""
    threshold = conformal_threshold(max_scores, alpha=alpha)
    return None if threshold is None else max(threshold, float(np.nextafter(floor, np.inf)))


def first_alarm(trace: RunTrace, threshold: float | None) -> int | None:
    for i, (p, d) in enumerate(zip(trace.forecast, trace.detected, strict=True)):
        if d or (threshold is not None and p is not None and p >= threshold):
            return i
    return None


def _max_forecast(trace: RunTrace) -> float:
    return max((p for p in trace.forecast if p is not None), default=0.0)


def _auc(y: list[int], s: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score  # imported here: the service reads this module's types at start

    return float(roc_auc_score(y, s)) if len(set(y)) == 2 else None


def risk_set(traces: Sequence[RunTrace], horizon: int) -> Iterator[tuple[RunTrace, int, int]]:
    """Every risk-set checkpoint as (trace, index, label): the checkpoints before onset, and a quiet
    run's checkpoints whose next ``horizon`` are known; label 1 when onset is within ``horizon``."""
    for t in traces:
        last = t.onset - 1 if t.onset is not None else len(t.forecast) - 1 - horizon
        for i in range(last + 1):
            yield t, i, int(t.onset is not None and t.onset - i <= horizon)


def scored_in_risk_set(trace: RunTrace, i: int) -> bool:
    """Whether checkpoint ``i`` counts in the AUCs: its forecast, drop and kl share all exist."""
    return trace.forecast[i] is not None and trace.drop[i] is not None and trace.kl_share[i] is not None


def _risk_set(traces: Sequence[RunTrace], horizon: int) -> tuple[list[int], list[list[float]], int, int]:
    """Labels and (forecast, drop, kl share) scores of risk-set checkpoints where all three exist; the
    number of risk-set checkpoints and how many of them had an applicable forecast."""
    y, scores, total, covered = [], [], 0, 0
    for t, i, label in risk_set(traces, horizon):
        total += 1
        covered += t.forecast[i] is not None
        if scored_in_risk_set(t, i):
            y.append(label)
            scores.append([t.forecast[i], t.drop[i], t.kl_share[i]])
    return y, scores, total, covered


def evaluate(traces: Sequence[RunTrace], thresholds: Sequence[float | None], *, horizon: int = 3,
             split: str = "all") -> HeldOut:
    """Metrics of `traces`, each judged with its own threshold (the one calibrated without it)."""
    if len(traces) != len(thresholds):
        raise ValueError("one threshold per trace")
    y, scores, total, covered = _risk_set(traces, horizon)
    cols = list(zip(*scores, strict=True)) if scores else [[], [], []]
    forgetting = [(t, th) for t, th in zip(traces, thresholds, strict=True) if t.onset is not None]
    quiet = [(t, th) for t, th in zip(traces, thresholds, strict=True) if t.onset is None]
    alarms = [(t, first_alarm(t, th)) for t, th in forgetting]
    late_onset = [(t, a) for t, a in alarms if t.onset >= 2]
    leads = [t.onset - a for t, a in alarms if a is not None]
    return HeldOut(
        split=split, families=len({t.family for t in traces}), methods=len({t.method for t in traces}),
        n_runs=len(traces), n_forgetting=len(forgetting),
        threshold=thresholds[0] if len(set(thresholds)) == 1 and thresholds else None,
        auc_h3=_auc(y, list(cols[0])), persistence_auc=_auc(y, list(cols[1])), kl_auc=_auc(y, list(cols[2])),
        risk_set_size=total, forecast_coverage=covered / total if total else None,
        early2_share=(sum(a is not None and t.onset - a >= 2 for t, a in late_onset) / len(late_onset)
                      if late_onset else None),
        median_lead_ckpts=float(np.median(leads)) if leads else None,
        false_alarm_runs=(sum(first_alarm(t, th) is not None for t, th in quiet) / len(quiet)) if quiet else None,
        detect_rate=(sum(a is not None and a <= t.onset + 1 for t, a in alarms) / len(alarms)) if alarms else None,
    )


def held_out(traces: Sequence[RunTrace], *, by: str, alpha: float = 0.10, horizon: int = 3,
             floor: float = 0.0) -> HeldOut:
    """Leave one group out (``by``: "family" or "method"): each group's runs are judged with the
    threshold calibrated on the other groups' non-forgetting runs (`alarm_threshold`)."""
    if by not in ("family", "method"):
        raise ValueError(f"by must be 'family' or 'method', got {by!r}")
    groups = sorted({getattr(t, by) for t in traces})
    thresholds = []
    for t in traces:
        others = [_max_forecast(o) for o in traces if getattr(o, by) != getattr(t, by) and o.onset is None]
        thresholds.append(alarm_threshold(others, alpha=alpha, floor=floor))
    result = evaluate(traces, thresholds, horizon=horizon, split=f"leave-one-{by}-out ({len(groups)} groups)")
    return result if len(groups) >= 2 else _no_split(result, by)


def _no_split(result: HeldOut, by: str) -> HeldOut:
    """With one group there is nothing to hold out: every alarm metric is n/a, never a silent in-sample one."""
    return HeldOut(result.split + f": one {by} only, nothing held out", result.families, result.methods,
                   result.n_runs, result.n_forgetting, None, result.auc_h3, result.persistence_auc, result.kl_auc,
                   result.risk_set_size, result.forecast_coverage, None, None, None, None)


def refit(traces: Sequence[RunTrace], *, shipped_maxima: Sequence[float], shipped_threshold: float,
          alpha: float = 0.10, horizon: int = 3, floor: float = 0.0,
          in_force_traces: Sequence[RunTrace] | None = None) -> tuple[float | None, HeldOut, HeldOut]:
    """The alarm threshold refitted on a user's labelled runs by shrinking toward the shipped one.

    Shrinkage is pooling: the conformal quantile over the user's non-forgetting runs *and* the shipped
    corpus's (``shipped_maxima``, their largest forecasts), so three user runs move the threshold a
    little and three hundred move it almost entirely. Returns the refitted threshold (over all the
    user's runs), its held-out record on the user's runs (each judged with the threshold refitted
    without it, leave one run out) and the shipped threshold's record on the same runs, scored as in
    ``in_force_traces`` (by the model in force) when the refit's scores come from another model.
    """
    thresholds = [alarm_threshold([*(_max_forecast(o) for o in traces if o is not t and o.onset is None),
                                   *shipped_maxima], alpha=alpha, floor=floor) for t in traces]
    refitted = alarm_threshold([*(_max_forecast(t) for t in traces if t.onset is None), *shipped_maxima],
                               alpha=alpha, floor=floor)
    return (refitted, evaluate(traces, thresholds, horizon=horizon, split="refit, leave one run out"),
            evaluate(in_force_traces or traces, [shipped_threshold] * len(traces), horizon=horizon,
                     split=f"shipped threshold {shipped_threshold:g}"))


def why_worse(refitted: HeldOut, shipped: HeldOut, *, alpha: float = 0.10) -> str | None:
    """Why the refit did worse than the shipped threshold on the same runs, or None when it did not.

    Worse is: more non-forgetting runs alarmed than both the shipped threshold and ``alpha`` allow, or
    fewer forgetting runs warned ≥ 2 checkpoints ahead without fewer false alarms, or more false
    alarms without more early warnings."""
    fa_r, fa_s = refitted.false_alarm_runs or 0.0, shipped.false_alarm_runs or 0.0
    early_r, early_s = refitted.early2_share or 0.0, shipped.early2_share or 0.0
    if fa_r > max(fa_s, alpha):
        return f"more runs that never forgot alarmed ({fa_r:.0%} vs {fa_s:.0%}, above the allowed {alpha:.0%})"
    if early_r < early_s and fa_r >= fa_s:
        return f"fewer forgetting runs warned 2 checkpoints ahead ({early_r:.0%} vs {early_s:.0%}) with no fewer false alarms"
    if fa_r > fa_s and early_r <= early_s:
        return f"more false alarms ({fa_r:.0%} vs {fa_s:.0%}) with no more early warnings"
    return None
