"""The transfer matrix of a run trained through stages, and its backward and forward transfer.

``R[i, p]`` is the score (accuracy, or reference log-likelihood in nats/token) on probe set ``p``
at the end of stage ``i``; row 0 is the base. Each probe set is trained for by one stage
``stage_of[p]`` (1..T), or by none (0: a retention-only set, e.g. an ``ood`` one). With ``c`` the
last row measured so far (the current or final stage), after Lopez-Paz & Ranzato (2017, "Gradient
Episodic Memory for Continual Learning", §5) with the base as the reference ``b``:

    BWT = 1/|K| Σ_{k in K} mean_{p: stage_of[p]=k} (R[c, p] − R[k, p]),   K = stages k < c
    FWT = 1/|K'| Σ_{k in K'} mean_{p: stage_of[p]=k} (R[k−1, p] − R[0, p]), K' = stages 2..c+1

Negative BWT is forgetting of earlier stages; positive FWT is what earlier stages taught a later
one before it began. A stage or cell not measured yet drops out of the average.

Intervals: a percentile bootstrap over probe items, stratified by probe set (each replicate
resamples every probe set's items once and recomputes every cell on them, so the cells of one
probe set stay paired; Efron & Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval at ``confidence``."""

    value: float
    ci_low: float
    ci_high: float
    n_stages: int
    confidence: float


@dataclass(frozen=True)
class TransferResult:
    """``matrix``: (rows, probe sets) with None for unmeasured cells; ``final_row`` is ``c``;
    ``bwt`` / ``fwt`` are None when no stage pair is measured for them."""

    matrix: tuple[tuple[float | None, ...], ...]
    final_row: int
    bwt: Interval | None
    fwt: Interval | None


def weighted_scores(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ w·x / Σ w over items: ``scores`` (rows, items) with NaN rows for unmeasured ones,
    ``weights`` (items,) positive; returns (rows,)."""
    return np.asarray(scores @ weights / weights.sum(), dtype=np.float64)


def relative_drop(start: float, current: float) -> float | None:
    """(start − current) / |start|: the share of a score lost since ``start`` (positive = worse).
    None when ``start`` is 0 (no scale to compare with)."""
    if start == 0:
        return None
    return (start - current) / abs(start)


def _transfer(rows: np.ndarray, stage_of: Sequence[int], final_row: int) -> tuple[list[float], list[float]]:
    """The per-stage terms of BWT and FWT of one matrix ``rows`` (rows, probe sets), NaN = unmeasured."""
    n_rows = rows.shape[0]
    backward, forward = [], []
    for stage in range(1, n_rows):
        columns = [p for p, s in enumerate(stage_of) if s == stage]
        if not columns:
            continue
        if stage < final_row:
            diffs = rows[final_row, columns] - rows[stage, columns]
            if np.isfinite(diffs).any():
                backward.append(float(np.nanmean(diffs)))
        if 2 <= stage <= final_row + 1:
            diffs = rows[stage - 1, columns] - rows[0, columns]
            if np.isfinite(diffs).any():
                forward.append(float(np.nanmean(diffs)))
    return backward, forward


def transfer_matrix(
    scores: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    stage_of: Sequence[int],
    *,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> TransferResult:
    """The matrix R, BWT and FWT with bootstrap intervals.

    ``scores[p]``: (rows, items of p), per-item scores on probe set ``p`` at the end of each stage,
    row 0 the base, a row of NaN where the cell is not measured; every ``scores[p]`` has the same
    rows (T + 1). ``weights[p]``: (items of p,) positive item weights (tokens for log-likelihood, 1
    for accuracy). ``stage_of[p]``: the stage (1..T) training for ``p``, 0 for none.
    """
    if not (len(scores) == len(weights) == len(stage_of)) or not scores:
        raise ValueError(
            f"need one scores, weights and stage per probe set, got {len(scores)}, {len(weights)}, "
            f"{len(stage_of)}"
        )
    n_rows = scores[0].shape[0] if scores[0].ndim == 2 else -1
    for p, (x, w) in enumerate(zip(scores, weights, strict=True)):
        if x.ndim != 2 or x.shape[0] != n_rows or w.shape != (x.shape[1],) or x.shape[1] == 0:
            raise ValueError(
                f"probe set {p}: scores must be (rows={n_rows}, items>0) and weights (items,), got "
                f"{x.shape} and {w.shape}"
            )
        if not (np.isfinite(w).all() and (w > 0).all()):
            raise ValueError(f"probe set {p}: weights must be finite and positive")
        if not all(np.isfinite(row).all() or np.isnan(row).all() for row in x):
            raise ValueError(f"probe set {p}: a row must be measured on every item or on none (all NaN)")
    if any(not 0 <= s < n_rows for s in stage_of):
        raise ValueError(f"stage_of must lie in 0..{n_rows - 1}, got {list(stage_of)}")
    if n_bootstrap < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_bootstrap >= 1 and 0 < confidence < 1, got {n_bootstrap}, {confidence}")
    xs = [np.asarray(x, dtype=np.float64) for x in scores]
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    rows = np.stack(
        [weighted_scores(x, w) for x, w in zip(xs, ws, strict=True)], axis=1
    )  # (rows, probe sets)
    measured = np.flatnonzero(np.isfinite(rows[1:]).any(axis=1))
    final_row = int(measured[-1]) + 1 if measured.size else 0
    backward, forward = _transfer(rows, stage_of, final_row)

    rng = np.random.default_rng(random_state)
    replicates = np.empty((n_bootstrap, *rows.shape))  # (replicates, rows, probe sets)
    for p, (x, w) in enumerate(zip(xs, ws, strict=True)):
        idx = rng.integers(0, w.size, size=(n_bootstrap, w.size))  # (replicates, items)
        ww = w[idx]
        replicates[:, :, p] = np.einsum("rbi,bi->br", x[:, idx], ww) / ww.sum(1)[:, None]
    # (replicates, 2): the terms measured in the point estimate are measured in every replicate
    pairs = np.array(
        [[np.mean(t) if t else np.nan for t in _transfer(r, stage_of, final_row)] for r in replicates]
    )
    tail = (1 - confidence) / 2

    def interval(terms: list[float], column: int) -> Interval | None:
        if not terms:
            return None
        value = float(np.mean(terms))
        low, high = np.quantile(pairs[:, column], [tail, 1 - tail])
        return Interval(value, float(min(low, value)), float(max(high, value)), len(terms), confidence)

    matrix = tuple(tuple(None if np.isnan(v) else float(v) for v in row) for row in rows)
    return TransferResult(matrix, final_row, interval(backward, 0), interval(forward, 1))
