"""The declared inputs of the forgetting alarms: one registry, each feature with its unit and the
reason it means the same thing on a 0.4 M-parameter character model and on an 8 B model with a
150k-token vocabulary.

Every value here is dimensionless: a share of the base's own score on the same probe items, or a
count of the run's own checkpoints. Quantities whose scale belongs to the model (KL in nats/token,
entropy, relative L2, slopes per 1000 steps, distinct-n on whitespace words) are not inputs of
the alarms; the service still reports them as measurements.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str
    transfers: str


OOD_DROP = Feature(
    "ood_drop_ratio", "share of the base's score",
    "(base − checkpoint) / |base| of ood accuracy (or of reference log-likelihood per token when the probe "
    "set has no checkable answers), paired item by item on the same probes: a share of what the base "
    "itself achieved, so neither the model's size, its vocabulary nor the probes' difficulty set its scale.")
OOD_DROP_LOW = Feature(
    "ood_drop_ratio_low", "share of the base's score",
    "lower end of the paired-bootstrap interval of ood_drop_ratio: the same share, minus the item-sampling "
    "noise of this probe set, so a 3-item and a 300-item probe set are judged on what they can show.")
OOD_DROP_HIGH = Feature(
    "ood_drop_ratio_high", "share of the base's score",
    "upper end of the same interval; its width is the probe set's own noise in the same unit.")
CHECKPOINT_INDEX = Feature(
    "checkpoint_index", "checkpoints of this run",
    "training progress as (step − latest step) / the step gap between the run's last two measured checkpoints: "
    "the forecast's clock is the run's own current checkpoint cadence, not steps, tokens or learning rate of any "
    "one trainer.")

GAP_Z = Feature(
    "gap_z", "standard deviations of the drop",
    "(threshold − ood_drop_ratio) / the drop's standard deviation (its bootstrap half-width / 1.96, at least half "
    "an item of the probe set): how many units of this probe set's own noise separate the run from forgetting, "
    "so 64 items and 1000 items, a strong base and a weak one, are read on one scale.")
DROP_SLOPE_T = Feature(
    "drop_slope_t", "t-statistic",
    "least-squares slope of the last 6 measured drops per checkpoint over its standard error from the points' "
    "own spreads: how sure the rise is, not how steep, so answer churn on a small probe set does not read as a "
    "trend and the run's checkpoint cadence sets the clock.")
LOG_CHECKPOINTS = Feature(
    "log_checkpoints", "ln(checkpoints of this run)",
    "ln of the checkpoints measured so far: the run's own age in its own checkpoints, not steps or tokens.")

OOD_KL_ENTROPY_SHARE = Feature(
    "ood_kl_entropy_share", "share of the base's per-token entropy",
    "mean forward KL(base ‖ checkpoint) on the ood probes divided by the base's own mean per-token entropy on "
    "the same probes (floored at ENTROPY_FLOOR_NATS): how far the checkpoint moved relative to how uncertain the "
    "base already was, so a 150k-token vocabulary and a 28-token one are on one scale. Reported, not yet an "
    "input of the forecast.")

#: A base entropy below this (nats/token) is treated as this: a near-deterministic base must not turn
#: rounding noise into a huge share.
ENTROPY_FLOOR_NATS = 0.05

#: The registry: the inputs `drift.alarms` reads (the first four), the served forecast model's
#: (`drift.hazard.INPUTS["hazard/3"]`, the next three) and the scale-free features reported beside them.
FEATURES: tuple[Feature, ...] = (OOD_DROP, OOD_DROP_LOW, OOD_DROP_HIGH, CHECKPOINT_INDEX, GAP_Z, DROP_SLOPE_T,
                                 LOG_CHECKPOINTS, OOD_KL_ENTROPY_SHARE)


def kl_entropy_share(kl_nats: float, base_entropy_nats: float) -> float:
    """`OOD_KL_ENTROPY_SHARE`: KL / max(base entropy, `ENTROPY_FLOOR_NATS`)."""
    if kl_nats < 0 or base_entropy_nats < 0:
        raise ValueError(f"KL and entropy must be non-negative, got {kl_nats}, {base_entropy_nats}")
    return kl_nats / max(base_entropy_nats, ENTROPY_FLOOR_NATS)
