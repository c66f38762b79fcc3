"""Comparing runs: in-domain gain against ood loss, at a matched step or a matched gain, and the
Pareto-efficient runs.

A run is a sequence of checkpoints (steps ascending), each with an in-domain gain and an ood loss
(both vs the base, larger gain better, larger loss worse) and the paired-bootstrap interval of each.
Between two checkpoints values are interpolated linearly; so are the interval bounds (the interval
at a point between two checkpoints is the same blend of their intervals, not a new bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A value with its interval (``low`` ≤ ``value`` ≤ ``high`` when all three are known)."""

    value: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Matched:
    """One run read at a matched point: the step (interpolated: may lie between checkpoints), its
    in-domain gain and its ood loss."""

    step: float
    gain: Estimate
    loss: Estimate


def _finite(name: str, x: Sequence[float | None]) -> np.ndarray:
    a = np.array([np.nan if v is None else v for v in x], dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def combine(estimates: Sequence[Estimate]) -> Estimate | None:
    """The mean of independent estimates (e.g. several probe sets of one domain) with an interval whose
    half-widths on each side add in quadrature: ``mean ± sqrt(Σ hᵢ²) / k``. None for no estimates; the
    interval is None when any estimate lacks one."""
    if not estimates:
        return None
    k = len(estimates)
    value = sum(e.value for e in estimates) / k
    if any(e.low is None or e.high is None for e in estimates):
        return Estimate(value)
    below = np.sqrt(sum((e.value - e.low) ** 2 for e in estimates if e.low is not None)) / k
    above = np.sqrt(sum((e.high - e.value) ** 2 for e in estimates if e.high is not None)) / k
    return Estimate(value, float(value - below), float(value + above))


def _blend(a: Estimate, b: Estimate, w: float) -> Estimate:
    value = (1 - w) * a.value + w * b.value
    if a.low is None or b.low is None or a.high is None or b.high is None:
        return Estimate(value)
    return Estimate(value, (1 - w) * a.low + w * b.low, (1 - w) * a.high + w * b.high)


def _check(steps: Sequence[float], gains: Sequence[Estimate], losses: Sequence[Estimate]) -> np.ndarray:
    x = _finite("steps", steps)
    if not (len(x) == len(gains) == len(losses)):
        raise ValueError(f"steps, gains and losses differ in length: {len(x)}, {len(gains)}, {len(losses)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"steps must be finite, got {x.tolist()}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"steps must be strictly increasing, got {x.tolist()}")
    for e in (*gains, *losses):
        if not np.isfinite(e.value):
            raise ValueError(f"gains and losses must be finite, got {e.value}")
    return x


def at_step(
    steps: Sequence[float], gains: Sequence[Estimate], losses: Sequence[Estimate], *, step: float
) -> Matched | None:
    """The run at ``step``, interpolated linearly between the two checkpoints around it; None when
    ``step`` lies outside the run's checkpoints (no extrapolation)."""
    x = _check(steps, gains, losses)
    if len(x) == 0 or step < x[0] or step > x[-1]:
        return None
    j = int(np.searchsorted(x, step, side="left"))
    if x[j] == step:
        return Matched(float(step), gains[j], losses[j])
    w = float((step - x[j - 1]) / (x[j] - x[j - 1]))
    return Matched(float(step), _blend(gains[j - 1], gains[j], w), _blend(losses[j - 1], losses[j], w))


def at_gain(
    steps: Sequence[float], gains: Sequence[Estimate], losses: Sequence[Estimate], *, gain: float
) -> Matched | None:
    """The run where its in-domain gain first reaches ``gain``: the first checkpoint at that gain, or
    the point on the segment into the first checkpoint past it (linear in gain, and the step and ood
    loss with the same weight). The gain's own interval is blended the same way. None when the run
    never reaches ``gain``."""
    x = _check(steps, gains, losses)
    g = np.array([e.value for e in gains], dtype=np.float64)
    hits = np.flatnonzero(g >= gain)
    if len(hits) == 0:
        return None
    j = int(hits[0])
    if j == 0 or g[j] == gain:
        return Matched(float(x[j]), gains[j], losses[j])
    w = float((gain - g[j - 1]) / (g[j] - g[j - 1]))
    return Matched(
        float((1 - w) * x[j - 1] + w * x[j]),
        _blend(gains[j - 1], gains[j], w),
        _blend(losses[j - 1], losses[j], w),
    )


def pareto_efficient(gains: Sequence[float], losses: Sequence[float]) -> list[bool]:
    """For each point (gain, loss), whether no other point dominates it: at least as much gain and at
    most as much loss, and strictly better in one. Non-finite points are never efficient and dominate
    nothing. O(n²), for the handful of runs one compares."""
    g, lo = _finite("gains", gains), _finite("losses", losses)
    if len(g) != len(lo):
        raise ValueError(f"gains and losses differ in length: {len(g)} vs {len(lo)}")
    ok = np.isfinite(g) & np.isfinite(lo)
    out = []
    for i in range(len(g)):
        if not ok[i]:
            out.append(False)
            continue
        dominated = ok & (g >= g[i]) & (lo <= lo[i]) & ((g > g[i]) | (lo < lo[i]))
        out.append(not bool(dominated.any()))
    return out
