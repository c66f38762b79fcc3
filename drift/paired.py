"""A paired change of a per-item score and its confidence interval.

``change = current − base`` of weighted means over the same items. The interval is a paired
percentile bootstrap over items (Efron & Tibshirani 1993, ch. 13): each replicate resamples item
indices once and recomputes both scores on them, so item difficulty cancels. Pure numpy: the API
process computes retention intervals with it and never loads a model library.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedChange:
    """A score on the base and on the checkpoint, with ``change = current − base`` and its
    ``confidence`` bootstrap interval ``[ci_low, ci_high]`` over ``n_items`` paired items."""

    base: float
    current: float
    change: float
    ci_low: float
    ci_high: float
    n_items: int
    confidence: float



def paired_bootstrap_change(
    base: np.ndarray,
    current: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> PairedChange:
    """Weighted means of paired per-item scores and a paired percentile bootstrap CI of their change.

    ``base``, ``current``, ``weights``: shape (items,). Score = Σ w·x / Σ w (weights default 1).
    A single item gives a zero-width interval.
    """
    base, current = np.asarray(base, dtype=np.float64), np.asarray(current, dtype=np.float64)
    w = np.ones_like(base) if weights is None else np.asarray(weights, dtype=np.float64)
    if base.ndim != 1 or base.shape != current.shape or base.shape != w.shape:
        raise ValueError(f"base, current and weights must be 1-D of one length, got shapes "
                         f"{base.shape}, {current.shape}, {w.shape}")
    if base.size == 0:
        raise ValueError("no items to compare")
    if not (np.isfinite(base).all() and np.isfinite(current).all() and np.isfinite(w).all()):
        raise ValueError("base, current and weights must be finite")
    if (w <= 0).any():
        raise ValueError(f"weights must be positive, got min {w.min()}")
    if n_bootstrap < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_bootstrap >= 1 and 0 < confidence < 1, got {n_bootstrap}, {confidence}")
    rng = np.random.default_rng(random_state)
    b_score, c_score = float(w @ base / w.sum()), float(w @ current / w.sum())
    idx = rng.integers(0, base.size, size=(n_bootstrap, base.size))  # (replicates, items)
    ww = w[idx]
    changes = ((current[idx] - base[idx]) * ww).sum(1) / ww.sum(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(changes, [tail, 1 - tail])
    return PairedChange(
        base=b_score,
        current=c_score,
        change=c_score - b_score,
        ci_low=float(min(low, c_score - b_score)),
        ci_high=float(max(high, c_score - b_score)),
        n_items=int(base.size),
        confidence=confidence,
    )
