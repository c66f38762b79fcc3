"""What no forecast read from the ood probes can do on a set of labelled runs: the limits behind the
held-out frontier (`bench.risk_heldout` prints them).

* **Early warning.** A forgetting run whose probe drop has not passed `UNMOVED` at any checkpoint up
  to onset − ``lead`` shows a forecast nothing that a run which never moves does not show too. Warning
  it ``lead`` checkpoints ahead means alarming on unmoved runs, and most runs that never forget never
  move. So a forecast from the probes alone warns at most the moved share of the late-onset runs
  (``early_bound``) at any false-alarm budget that spares unmoved runs. Their ood KL share then is
  placed among the largest KL share of each run of their family that never forgot
  (``unmoved_kl_rank``): near the middle, the KL does not tell them apart either.
* **Ranking.** On the risk set (`drift.evaluation.risk_set`, the checkpoints the AUCs score), a row
  whose probes have not moved yet cannot be ranked above another such row by a probe-only score: the
  best such score ties them and ranks every other pair right, so its AUC is at most
  ``1 − ½ · P(positive unmoved) · P(negative unmoved)`` (``probe_auc_bound``).
* **Detection.** Forgetting runs whose labels crossed the threshold while their probes, on other
  items, still read below it at onset + 1 (``probes_behind``): the detection rule cannot have caught
  them by then, so only a forecast alarming on a sub-threshold reading does.

These are properties of the runs, not of a model: a model with other inputs (ood KL, weights) is not
bound by them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from drift.evaluation import RunTrace, risk_set, scored_in_risk_set

__all__ = ["UNMOVED", "ForecastLimits", "ProbesBehind", "forecast_limits", "moved_by"]

#: A relative drop this small is no movement: at most one item of 256 at a base accuracy of 0.8 or more.
UNMOVED = 0.005


def moved_by(trace: RunTrace, checkpoint: int) -> bool:
    """Whether the run's probe drop passed `UNMOVED` at any checkpoint up to ``checkpoint``."""
    return any(d is not None and d > UNMOVED for d in trace.drop[: checkpoint + 1])


@dataclass(frozen=True)
class ProbesBehind:
    run: str
    onset: int
    drop: float  # the probe drop at onset + 1 (at onset when the run ends there)


@dataclass(frozen=True)
class ForecastLimits:
    lead: int
    late_onset: int  # forgetting runs with onset at or after checkpoint `lead`
    unmoved_before_lead: int  # of them, runs whose probes had not moved by onset − lead
    unmoved_kl_rank: tuple[float, ...]  # each one's KL share at onset − lead: share of its family's quiet runs peaking lower
    positive_rows: int
    positive_unmoved: float  # share of risk-set rows with onset within the horizon whose probes had not moved
    negative_rows: int
    negative_unmoved: float
    threshold: float
    probes_behind: tuple[ProbesBehind, ...]
    forgetting: int

    @property
    def early_bound(self) -> float | None:
        moved = self.late_onset - self.unmoved_before_lead
        return moved / self.late_onset if self.late_onset else None

    @property
    def probe_auc_bound(self) -> float | None:
        if not self.positive_rows or not self.negative_rows:
            return None
        return 1.0 - 0.5 * self.positive_unmoved * self.negative_unmoved

    def lines(self) -> list[str]:
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        out = [
            (f"late-onset forgetting runs whose probes had not moved (drop <= {UNMOVED}) by onset - {self.lead}: "
            f"{self.unmoved_before_lead} of {self.late_onset}; a probe-only forecast warns at most "
            f"early{self.lead}_share={f(self.early_bound)} without alarming on unmoved runs; their ood KL share then "
            f"tops that of {_spread(self.unmoved_kl_rank)} of their family's runs that never forgot"),
            (f"risk-set rows with probes not moved yet: {f(self.positive_unmoved)} of {self.positive_rows} positive, "
            f"{f(self.negative_unmoved)} of {self.negative_rows} negative; a probe-only score's auc_h3 <= "
            f"{f(self.probe_auc_bound)}"),
            (f"forgetting runs whose probes still read below the threshold {self.threshold:g} at onset + 1 "
            f"(undetected then): {len(self.probes_behind)} of {self.forgetting}"),
        ]
        out += [f"  {b.run} onset {b.onset}: probe drop {b.drop:.3f}" for b in self.probes_behind]
        return out


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"a median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def _kl_rank(trace: RunTrace, checkpoint: int, quiet: Sequence[RunTrace]) -> float | None:
    kl = trace.kl_share[checkpoint]
    peaks = [max(k for k in q.kl_share if k is not None) for q in quiet
             if q.family == trace.family and any(k is not None for k in q.kl_share)]
    return None if kl is None or not peaks else sum(p < kl for p in peaks) / len(peaks)


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def forecast_limits(traces: Sequence[RunTrace], *, threshold: float, horizon: int = 3,
                    lead: int = 2) -> ForecastLimits:
    """The limits of a probe-only forecast on ``traces`` (module docstring): early warnings ``lead``
    checkpoints ahead, AUC at ``horizon``, forgetting at the relative drop ``threshold``."""
    late = [(t, t.onset - lead) for t in traces if t.onset is not None and t.onset >= lead]
    unmoved = [(t, last) for t, last in late if not moved_by(t, last)]
    quiet = [t for t in traces if t.onset is None]
    ranks = [r for t, last in unmoved if (r := _kl_rank(t, last, quiet)) is not None]
    positive: list[bool] = []
    negative: list[bool] = []
    for t, i, label in risk_set(traces, horizon):
        if scored_in_risk_set(t, i):
            (positive if label else negative).append(not moved_by(t, i))
    behind = []
    for t in traces:
        if t.onset is None:
            continue
        last = min(t.onset + 1, len(t.detected) - 1)
        drop = t.drop[last]
        if not any(t.detected[: last + 1]) and drop is not None and drop < threshold:
            behind.append(ProbesBehind(t.run, t.onset, drop))
    return ForecastLimits(
        lead=lead, late_onset=len(late), unmoved_before_lead=len(unmoved), unmoved_kl_rank=tuple(ranks),
        positive_rows=len(positive), positive_unmoved=_share(positive),
        negative_rows=len(negative), negative_unmoved=_share(negative),
        threshold=threshold, probes_behind=tuple(behind), forgetting=sum(t.onset is not None for t in traces),
    )
