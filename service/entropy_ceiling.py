"""The in-domain ceiling of one run from its entropy–performance relation (`drift.entropy_ceiling`):
policy entropy from the trainer's training metrics, performance from the in-domain probe accuracy the
service measured, paired at each checkpoint (the entropy logged at or before its step)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from drift.entropy_ceiling import MIN_POINTS, EntropyCeiling, fit_entropy_ceiling, values_at_steps
from service.db import training_metrics

#: Training metric names read as the policy's entropy (nats), first found wins: TRL's GRPO logs `entropy`.
ENTROPY_METRICS = ("entropy", "train/entropy", "policy_entropy")


def entropy_ceiling(session: Session, *, run_id: int, probe_rows: list[dict[str, Any]]) -> EntropyCeiling:
    """The fit, or why it abstains. `probe_rows` are the run's `response_drift.run_probe_series`."""
    found = training_metrics.series(session, run_id=run_id, names=ENTROPY_METRICS)
    name = next((n for n in ENTROPY_METRICS if found.get(n)), None)
    if name is None:
        return EntropyCeiling(
            False,
            0,
            f"no training metric named {' or '.join(ENTROPY_METRICS)}: the trainer "
            "reports the policy entropy with POST /v1/runs/{run}/metrics",
        )
    accuracy: dict[int, list[float]] = {}
    for r in probe_rows:
        if r["domain"] != "ood" and r["accuracy"] is not None:
            accuracy.setdefault(int(r["step"]), []).append(float(r["accuracy"]))
    if not accuracy:
        return EntropyCeiling(
            False, 0, "no in-domain probe accuracy yet: attach an in-domain probe set with answers to the run"
        )
    steps = sorted(accuracy)
    points = found[name]
    entropy = values_at_steps([int(p["step"]) for p in points], [p["value"] for p in points], steps)
    pairs = [
        (h, sum(accuracy[s]) / len(accuracy[s])) for s, h in zip(steps, entropy, strict=True) if h is not None
    ]
    if len(pairs) < MIN_POINTS:
        return EntropyCeiling(
            False,
            len(pairs),
            f"{len(pairs)} checkpoint(s) with both in-domain accuracy and "
            f"an earlier {name!r} value; the fit needs at least {MIN_POINTS}",
        )
    return fit_entropy_ceiling([h for h, _ in pairs], [r for _, r in pairs])
