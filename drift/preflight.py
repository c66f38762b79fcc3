"""Pre-flight forgetting forecast: how much will a coming stage cost each retention set?

Domain distance (the seed paper's measure, arXiv:2607.01763): the RBF maximum mean discrepancy
between two sets of prompt embeddings x (m, d) and y (n, d),

    MMD(x, y) = sqrt(max(0, mean k(x, x') + mean k(y, y') − 2 mean k(x, y))),
    k(a, b) = exp(−‖a − b‖² / (2 h²)),   h = median pairwise distance of the pooled sample,

the biased (V-statistic) estimate of Gretton et al. (2012, eq. 5), which is never negative, so the
distance of a set to itself is 0; bounded by sqrt(2).

Predictor: Bayesian linear regression of the retention loss y (the relative drop of a retention
set's score across one stage, positive = forgotten) on the features (1, d, b_μ(d)) of the distance
d, where ``b_μ(d) = (d/μ)·exp(1 − d/μ)`` is a bump that is 0 at d = 0, peaks at 1 at d = μ and
decays toward 0 for distant domains. Its weight h can express the seed's inverted U (the most
forgetting for partially related domains, MMD ≈ 0.1–0.3), the linear term a monotone relation. The
weights have a Gaussian prior centred on the bump of height `PRIOR_PEAK_LOSS` at
`PRIOR_PEAK_DISTANCE` (so with no history the forecast is that prior with a wide interval); with
history, μ is chosen from `PEAK_GRID` by the marginal likelihood (evidence) and each measured
(distance, loss) pair of the run's earlier stages pulls the weights toward the run's own relation
(Bishop 2006, §3.3 and §3.5). The noise variance is the prior's ``PRIOR_NOISE_SD²`` pooled with the
residuals (``ν₀ = PRIOR_NOISE_DOF`` pseudo-observations). The interval is the normal predictive
interval ``mean ± z · sqrt(σ² + φᵀ S φ)``. The fitted curve is called an inverted U when its
maximum over the observed distances lies strictly inside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from drift.gram import median_bandwidth, rbf_kernel, squared_distances

PRIOR_PEAK_DISTANCE = 0.2
PRIOR_PEAK_LOSS = 0.1
PRIOR_CURVE = (0.0, 0.0, PRIOR_PEAK_LOSS)  # prior mean of the weights of (1, d, b_μ(d))
PRIOR_WEIGHT_SD = (0.1, 0.3, 0.3)
PRIOR_NOISE_SD = 0.1
PRIOR_NOISE_DOF = 2.0
PEAK_GRID = (0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DomainDistance:
    """RBF MMD between two embedding sets at the median-heuristic ``bandwidth``."""

    mmd: float
    bandwidth: float
    n_x: int
    n_y: int


@dataclass(frozen=True)
class ForgettingCurve:
    """A fitted relation loss ≈ c0 + c1·d + h·b_μ(d): the posterior mean ``coefficients`` (c0, c1, h),
    the bump's ``peak_scale`` μ, the weights' posterior ``covariance`` (3×3, row-major tuples), the
    noise ``noise_sd``, how many history pairs ``n_pairs`` it was fitted on (0 = the prior alone), the
    range of their distances, and ``inverted_u``: the curve's maximum over that range, at
    ``peak_distance``, lies strictly inside it."""

    coefficients: tuple[float, float, float]
    peak_scale: float
    covariance: tuple[tuple[float, ...], ...]
    noise_sd: float
    n_pairs: int
    distance_range: tuple[float, float] | None
    inverted_u: bool
    peak_distance: float | None
    source: str  # "prior" or "history"


@dataclass(frozen=True)
class Forecast:
    """The predicted retention loss at ``distance`` with its ``confidence`` interval."""

    distance: float
    loss: float
    ci_low: float
    ci_high: float
    confidence: float


def _check_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be (n >= 2, dim >= 1) embeddings, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or inf; embed the prompts again")
    return arr


def domain_distance(x: np.ndarray, y: np.ndarray, *, bandwidth: float | None = None) -> DomainDistance:
    """RBF MMD (biased estimate, square-rooted) between the rows of ``x`` (m, d) and ``y`` (n, d);
    ``bandwidth`` defaults to the median pairwise distance of the pooled rows. Identical or constant
    samples give 0."""
    a, b = _check_embeddings(x, "x"), _check_embeddings(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    if bandwidth is not None and not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive finite number or None, got {bandwidth}")
    m = a.shape[0]
    d2 = squared_distances(np.concatenate([a, b]))  # (m + n, m + n)
    h = median_bandwidth(d2) if bandwidth is None else float(bandwidth)
    if h == 0:  # every pooled row coincides: no distance
        return DomainDistance(0.0, 0.0, m, b.shape[0])
    k = rbf_kernel(d2, h)
    mmd2 = k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()
    return DomainDistance(float(np.sqrt(max(0.0, mmd2))), h, m, b.shape[0])


def _features(d: np.ndarray, scale: float) -> np.ndarray:
    bump = (d / scale) * np.exp(1.0 - d / scale)
    return np.stack([np.ones_like(d), d, bump], axis=1)  # (n, 3)


def _posterior(phi: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(mean, covariance, noise variance, log evidence) of the weights given features ``phi`` (n, 3)."""
    m0 = np.array(PRIOR_CURVE)
    s0 = np.diag(np.square(PRIOR_WEIGHT_SD))
    s0_inv = np.linalg.inv(s0)
    noise2 = PRIOR_NOISE_SD**2
    for last in (False, False, True):  # noise variance pooled with the residuals of the mean
        cov = np.linalg.inv(s0_inv + phi.T @ phi / noise2)
        mean = cov @ (s0_inv @ m0 + phi.T @ y / noise2)
        if not last:
            rss = float(np.sum((y - phi @ mean) ** 2))
            noise2 = (PRIOR_NOISE_DOF * PRIOR_NOISE_SD**2 + rss) / (PRIOR_NOISE_DOF + y.size)
    marginal = noise2 * np.eye(y.size) + phi @ s0 @ phi.T  # y ~ N(Φ m0, σ²I + Φ S0 Φᵀ)
    resid = y - phi @ m0
    _, logdet = np.linalg.slogdet(marginal)
    evidence = -0.5 * (resid @ np.linalg.solve(marginal, resid) + logdet + y.size * np.log(2 * np.pi))
    return mean, cov, noise2, float(evidence)


def fit_forgetting_curve(distances: Sequence[float], losses: Sequence[float]) -> ForgettingCurve:
    """The posterior of loss ≈ c0 + c1·d + h·b_μ(d) given history pairs (distance, measured retention
    loss), μ the most likely of `PEAK_GRID`; empty inputs give the prior (`PRIOR_CURVE` at
    μ = `PRIOR_PEAK_DISTANCE`, `PRIOR_WEIGHT_SD`, `PRIOR_NOISE_SD`)."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    y = np.asarray(losses, dtype=np.float64).reshape(-1)
    if d.shape != y.shape:
        raise ValueError(f"need one loss per distance, got {d.size} distances and {y.size} losses")
    if not (np.isfinite(d).all() and np.isfinite(y).all()):
        raise ValueError("distances and losses must be finite; drop unmeasured pairs before fitting")
    if (d < 0).any():
        raise ValueError(f"distances must be >= 0, got {float(d.min())}")
    if d.size == 0:
        scale, mean = PRIOR_PEAK_DISTANCE, np.array(PRIOR_CURVE)
        cov, noise2 = np.diag(np.square(PRIOR_WEIGHT_SD)), PRIOR_NOISE_SD**2
    else:
        fits = [(_posterior(_features(d, mu), y), mu) for mu in PEAK_GRID]
        (mean, cov, noise2, _), scale = max(fits, key=lambda fit: fit[0][3])
    span = (float(d.min()), float(d.max())) if d.size else (0.0, 2 * PRIOR_PEAK_DISTANCE)
    grid = np.linspace(span[0], span[1], 201)
    curve = _features(grid, scale) @ mean
    top = int(np.argmax(curve))
    inverted = span[1] > span[0] and 0 < top < grid.size - 1 and curve[top] > max(curve[0], curve[-1]) + 1e-12
    return ForgettingCurve(
        coefficients=(float(mean[0]), float(mean[1]), float(mean[2])),
        peak_scale=float(scale),
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        noise_sd=float(np.sqrt(noise2)),
        n_pairs=int(d.size),
        distance_range=span if d.size else None,
        inverted_u=bool(inverted),
        peak_distance=float(grid[top]) if inverted else None,
        source="history" if d.size else "prior",
    )


def predict_forgetting(
    curve: ForgettingCurve, distances: Sequence[float], *, confidence: float = 0.9
) -> list[Forecast]:
    """The predicted retention loss at each distance with its normal predictive interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError(f"distances must be finite and >= 0, got {d.tolist()}")
    phi = _features(d, curve.peak_scale)
    mean = phi @ np.array(curve.coefficients)
    var = curve.noise_sd**2 + np.einsum("ni,ij,nj->n", phi, np.array(curve.covariance), phi)
    z = float(norm.ppf(0.5 + confidence / 2))
    sd = np.sqrt(var)
    return [
        Forecast(float(di), float(mi), float(mi - z * si), float(mi + z * si), confidence)
        for di, mi, si in zip(d, mean, sd, strict=True)
    ]
