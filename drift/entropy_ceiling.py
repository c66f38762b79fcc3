"""The entropy–performance relation of RL post-training, R ≈ −a·exp(H) + b (arXiv:2505.22617), fitted
on one run, and the in-domain ceiling it implies.

As the policy entropy H falls to 0, performance R approaches ``b − a``: the ceiling the run reaches once
its entropy is spent. The relation is linear in u = exp(H), so it is fitted by ordinary least squares of
R on u; the ceiling is the fitted line at u = 1, with a Student-t interval of that prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Fewer paired (entropy, performance) points than this: no fit.
MIN_POINTS = 4
#: Entropy must span at least this much (nats) across the points: a flat entropy says nothing about H → 0.
MIN_ENTROPY_SPAN = 1e-3


@dataclass(frozen=True)
class EntropyCeiling:
    """``applicable`` False with a ``reason`` when the fit abstains; then the numbers are None."""

    applicable: bool
    n_points: int
    reason: str | None = None
    a: float | None = None
    b: float | None = None
    ceiling: float | None = None  # b − a: performance at entropy 0
    ceiling_low: float | None = None
    ceiling_high: float | None = None
    r2: float | None = None


def values_at_steps(steps: Sequence[int], values: Sequence[float], at: Sequence[int]) -> list[float | None]:
    """For each step of ``at``, the value at the latest step of ``steps`` at or before it (None before the
    first). ``steps`` may come in any order; a step given twice keeps its last value."""
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length: {len(steps)} vs {len(values)}")
    by_step = dict(zip((int(s) for s in steps), (float(v) for v in values), strict=True))
    known = sorted(by_step)
    out: list[float | None] = []
    for s in at:
        i = int(np.searchsorted(known, int(s), side="right")) - 1
        out.append(by_step[known[i]] if i >= 0 else None)
    return out


def fit_entropy_ceiling(
    entropy: Sequence[float], performance: Sequence[float], *, confidence: float = 0.9
) -> EntropyCeiling:
    """Fit R = −a·exp(H) + b on paired points (entropy H in nats, performance R e.g. accuracy) and return
    the ceiling b − a with its ``confidence`` interval.

    Abstains (``applicable=False``, with the reason) with fewer than ``MIN_POINTS`` points, when the
    entropy barely varies, when any value is not finite or an entropy is negative, or when the fit has
    a ≤ 0 (performance does not rise as entropy falls: the relation does not describe this run).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if len(entropy) != len(performance):
        raise ValueError(f"entropy and performance differ in length: {len(entropy)} vs {len(performance)}")
    h = np.asarray(entropy, dtype=np.float64)
    r = np.asarray(performance, dtype=np.float64)
    n = len(h)
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(r))):
        return EntropyCeiling(False, n, "an entropy or performance value is NaN or infinite")
    if np.any(h < 0):
        return EntropyCeiling(False, n, "an entropy is negative: entropy is measured in nats, ≥ 0")
    if n < MIN_POINTS:
        return EntropyCeiling(
            False,
            n,
            f"{n} paired entropy/performance point{'s' * (n != 1)}; the fit needs at least {MIN_POINTS}",
        )
    if float(h.max() - h.min()) < MIN_ENTROPY_SPAN:
        return EntropyCeiling(
            False,
            n,
            f"entropy spans less than {MIN_ENTROPY_SPAN} nats: no trend towards entropy 0 to extrapolate",
        )
    u = np.exp(h)
    fit = stats.linregress(u, r)  # r = intercept + slope·u, so b = intercept and a = −slope
    a, b = -float(fit.slope), float(fit.intercept)
    if a <= 0:
        return EntropyCeiling(
            False,
            n,
            "performance does not rise as entropy falls (fitted a ≤ 0): "
            "the entropy–performance relation does not describe this run",
        )
    residual = r - (b - a * u)
    dof = n - 2
    s = float(np.sqrt(residual @ residual / dof))
    sxx = float(((u - u.mean()) ** 2).sum())
    se = s * float(np.sqrt(1.0 / n + (1.0 - u.mean()) ** 2 / sxx))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    total = float(((r - r.mean()) ** 2).sum())
    r2 = 1.0 - float(residual @ residual) / total if total > 0 else 1.0
    ceiling = b - a
    return EntropyCeiling(True, n, None, a, b, ceiling, ceiling - half, ceiling + half, r2)
