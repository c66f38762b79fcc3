"""The probe-free parameter heuristic, and the ground-truth onset of forgetting.

`heuristic_risk` answers for a run without ood probe sets from its parameter drift (and KL where
present). It is labelled as a heuristic everywhere it appears and never raises an alarm: the
alarms rest on measured ood forgetting (`drift.alarms`). `forgetting_onset` finds where a labelled
run's ground truth first dropped, for evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drift.forecast import PARAM_FEATURES, PROBE_FEATURES, finite_or_none

__all__ = ["RiskEstimate", "forgetting_onset", "heuristic_risk"]

#: Fallback heuristic: logit = Σ w_k · log2(x_k / ref_k), one unit of logit per doubling. The
#: references are order-of-magnitude placeholders (risk 0.5 at 0.05 nats/token of ood forward KL,
#: 2 % relative parameter change, 0.5 nats/token of new-task KL), not fitted values; weights follow
#: the replication's ranking of predictors (ood KL R² ≈ 0.99, parameter drift ≈ 0.79).
HEURISTIC_REFS = {"kl_fwd_ood": 0.05, "param_rel_l2": 0.02, "kl_fwd_in": 0.5}
HEURISTIC_WEIGHTS = {"kl_fwd_ood": 0.75, "param_rel_l2": 0.25}
HEURISTIC_VERSION = "1"


@dataclass(frozen=True)
class RiskEstimate:
    """``value`` in [0, 1], None when ``applicable`` is False (``reason`` says why).
    ``features_used`` were present in the row; ``features_missing`` were not (nothing is imputed)."""

    value: float | None
    model: str
    model_version: str
    features_used: tuple[str, ...]
    features_missing: tuple[str, ...]
    applicable: bool
    reason: str | None = None


def forgetting_onset(series: Sequence[float | None], *, base: float, relative_drop: float = 0.10) -> int | None:
    """Index of the first value with ``base − value ≥ relative_drop · |base|`` (a higher-is-better
    ground-truth ood metric, e.g. accuracy on held-out items; ``base`` is the base model's value).
    None/NaN means unmeasured and never counts; None when the run never dropped."""
    if not 0 < relative_drop < 1:
        raise ValueError(f"need 0 < relative_drop < 1, got {relative_drop}")
    if finite_or_none(base) is None or base == 0:
        raise ValueError(f"base must be finite and nonzero for a relative drop, got {base}")
    margin = relative_drop * abs(base) * (1 - 1e-9)  # tolerance: 0.5 → 0.45 is a 10 % drop
    return next((i for i, x in enumerate(series) if (v := finite_or_none(x)) is not None and base - v >= margin),
                None)


def _applicability(row: Mapping[str, float | None]) -> str | None:
    n = finite_or_none(row.get("n_checkpoints"))
    if n is not None and n < 2:
        return "fewer than 2 checkpoints: no trend yet"
    if not any(finite_or_none(row.get(k)) is not None for k in PROBE_FEATURES + PARAM_FEATURES):
        return "no probe or parameter measurements for this checkpoint"
    return None


def _sigmoid(x: float) -> float:
    return float(0.5 * (1.0 + math.tanh(0.5 * x)))


def heuristic_risk(row: Mapping[str, float | None]) -> RiskEstimate:
    """Rule-based risk without a fitted model (constants `HEURISTIC_REFS`/`HEURISTIC_WEIGHTS`):
    ``sigmoid(Σ w_k log2(x_k / ref_k))`` over ood forward KL and relative L2 drift, weights
    renormalized over those present; new-task forward KL alone (weight 1) when neither is."""
    reason = _applicability(row)
    present = {k: finite_or_none(row.get(k)) for k in HEURISTIC_REFS}
    present = {k: v for k, v in present.items() if v is not None}
    weights = {k: w for k, w in HEURISTIC_WEIGHTS.items() if k in present}
    if not weights and "kl_fwd_in" in present:
        weights = {"kl_fwd_in": 1.0}
    if reason is None and not weights:
        reason = "none of kl_fwd_ood, param_rel_l2, kl_fwd_in measured"
    used = tuple(sorted(weights))
    missing = tuple(k for k in sorted(HEURISTIC_REFS) if k not in weights)
    if reason is not None:
        return RiskEstimate(None, "heuristic", HEURISTIC_VERSION, used, missing, False, reason)
    total = sum(weights.values())
    logit = sum(w / total * math.log2(max(present[k], 1e-12) / HEURISTIC_REFS[k]) for k, w in weights.items())
    return RiskEstimate(_sigmoid(logit), "heuristic", HEURISTIC_VERSION, used, missing, True)
