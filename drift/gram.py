"""Label-free kernel matrices over a pooled sample (rows of z, shape (N, dim)): pairwise squared
distances, the median-heuristic bandwidth, the RBF kernel, and the Gram matrix after whitening.
The two-sample tests in `drift.shift` build these once and reuse them for every permutation."""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack


def squared_distances(z: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances of the rows of z, shape (N, N), clipped at 0."""
    sq = (z * z).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.fill_diagonal(d2, 0.0)
    clipped: np.ndarray = np.maximum(d2, 0.0)
    return clipped


def median_bandwidth(d2: np.ndarray) -> float:
    """Median heuristic: the median of the off-diagonal pairwise distances; 0 if all coincide."""
    off = d2[np.triu_indices_from(d2, k=1)]
    positive = off[off > 0]
    if positive.size == 0:
        return 0.0
    median = float(np.sqrt(np.median(off)))
    return median if median > 0 else float(np.sqrt(np.median(positive)))


def rbf_kernel(d2: np.ndarray, bandwidth: float) -> np.ndarray:
    """k(a, b) = exp(−‖a − b‖² / (2 h²))."""
    return np.exp(-d2 / (2.0 * bandwidth**2))


def whitened_gram(z: np.ndarray, *, ridge: float = 0.3) -> np.ndarray:
    """Gram matrix of the rows of z after centring and whitening with ``(C + δI)^-1/2``, where C
    is the covariance of z and ``δ = ridge · trace(C) / dim``; float32, shape (N, N).

    Computed in the dual, so the cost is O(N²·dim + N³) whatever the dimension: with
    G = Z̃ Z̃ᵀ (Z̃ centred) and c = N·δ, ``Z̃ (C + δI)⁻¹ Z̃ᵀ = N G (G + cI)⁻¹ = N (I − c (G + cI)⁻¹)``.
    """
    n, dim = z.shape
    zc = (z - z.mean(0)).astype(np.float32)
    gram = zc @ zc.T
    shift = float(ridge * np.trace(gram, dtype=np.float64) / dim)
    if shift <= 0:  # all rows equal: nothing to whiten
        return np.zeros((n, n), dtype=np.float32)
    chol, info = lapack.spotrf(gram + np.float32(shift) * np.eye(n, dtype=np.float32), lower=0)
    if info == 0:
        inverse, info = lapack.spotri(chol, lower=0)
    if info != 0:  # not expected for G + cI; fall back to the general solver
        inverse = np.linalg.inv((gram + shift * np.eye(n, dtype=np.float32)).astype(np.float64))
    else:
        inverse = np.triu(inverse) + np.triu(inverse, 1).T  # potri fills the upper triangle only
    whitened: np.ndarray = (n * (np.eye(n) - shift * inverse)).astype(np.float32)
    return whitened


def gram_to_squared_distances(gram: np.ndarray) -> np.ndarray:
    """Squared distances ``‖a − b‖² = G_aa + G_bb − 2 G_ab`` of the points behind a Gram matrix, clipped at 0."""
    diag = np.diag(gram)
    d2 = diag[:, None] + diag[None, :] - 2 * gram
    np.fill_diagonal(d2, 0.0)
    clipped: np.ndarray = np.maximum(d2, 0.0)
    return clipped
