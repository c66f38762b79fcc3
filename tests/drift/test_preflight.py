import numpy as np
import pytest
from numpy.testing import assert_allclose

from drift.preflight import (
    PRIOR_CURVE,
    PRIOR_PEAK_DISTANCE,
    PRIOR_PEAK_LOSS,
    domain_distance,
    fit_forgetting_curve,
    predict_forgetting,
)


def _reference_mmd(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Plain float64 loops: biased MMD² with the median pooled distance as bandwidth."""
    z = np.concatenate([x, y])
    n = len(z)
    dist = np.array([[np.linalg.norm(z[i] - z[j]) for j in range(n)] for i in range(n)])
    h = float(np.median([dist[i, j] for i in range(n) for j in range(i + 1, n)]))
    k = np.exp(-(dist**2) / (2 * h * h))
    m = len(x)
    mmd2 = k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()
    return float(np.sqrt(max(mmd2, 0.0))), h


def test_domain_distance_matches_a_float64_loop_reference() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.7, 1.0, size=(12, 5))
    found = domain_distance(x, y)
    mmd, h = _reference_mmd(x, y)
    assert_allclose([found.mmd, found.bandwidth], [mmd, h], rtol=1e-6)  # distances via ‖a‖²+‖b‖²−2ab
    assert (found.n_x, found.n_y) == (9, 12)


def test_distance_of_a_set_to_itself_is_zero_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8))
    assert domain_distance(x, x).mmd == pytest.approx(0.0, abs=1e-7)
    near = domain_distance(x, rng.normal(0.3, 1.0, size=(30, 8))).mmd
    far = domain_distance(x, rng.normal(3.0, 1.0, size=(30, 8))).mmd
    assert 0 < near < far <= np.sqrt(2)


def test_constant_samples_have_no_distance_instead_of_nan() -> None:
    x = np.ones((5, 3))
    found = domain_distance(x, x.copy())
    assert (found.mmd, found.bandwidth) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.ones((1, 3)), np.ones((4, 3)), "x must be"),
        (np.ones((4, 3)), np.ones((4, 2)), "same dimension"),
        (np.full((4, 3), np.nan), np.ones((4, 3)), "NaN"),
    ],
)
def test_bad_embeddings_are_refused_with_the_reason(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        domain_distance(x, y)


def test_without_history_the_forecast_is_the_documented_prior_inverted_u() -> None:
    curve = fit_forgetting_curve([], [])
    assert curve.source == "prior" and curve.n_pairs == 0
    assert_allclose(curve.coefficients, PRIOR_CURVE)
    assert curve.peak_scale == PRIOR_PEAK_DISTANCE
    peak, edge = predict_forgetting(curve, [PRIOR_PEAK_DISTANCE, 0.0])
    assert peak.loss == pytest.approx(PRIOR_PEAK_LOSS)
    assert edge.loss == pytest.approx(0.0, abs=1e-12)
    assert peak.ci_low < peak.loss < peak.ci_high
    assert curve.peak_distance == pytest.approx(PRIOR_PEAK_DISTANCE)


def test_history_pulls_the_curve_to_the_runs_own_relation() -> None:
    # an inverted U peaking at 0.45 with loss 0.4 (a bump of PEAK_GRID's), measured many times without noise
    d = np.tile(np.linspace(0.0, 1.2, 13), 4)
    y = 0.4 * (d / 0.45) * np.exp(1 - d / 0.45)
    curve = fit_forgetting_curve(d, y)
    assert curve.source == "history" and curve.n_pairs == 52 and curve.peak_scale == 0.45
    assert curve.inverted_u and curve.peak_distance == pytest.approx(0.45, abs=0.02)
    [at_peak] = predict_forgetting(curve, [0.45])
    assert at_peak.loss == pytest.approx(0.4, abs=0.02)
    [prior] = predict_forgetting(fit_forgetting_curve([], []), [0.45])
    assert at_peak.ci_high - at_peak.ci_low < prior.ci_high - prior.ci_low


def test_the_posterior_mean_equals_the_closed_form_ridge_solution() -> None:
    # at the reported noise σ² and bump scale μ, the mean solves (S0⁻¹ + ΦᵀΦ/σ²) w = S0⁻¹m0 + Φᵀy/σ²
    d = np.array([0.1, 0.3, 0.6, 0.9])
    y = np.array([0.05, 0.2, 0.1, -0.02])
    curve = fit_forgetting_curve(d, y)
    mu = curve.peak_scale
    phi = np.stack([np.ones(4), d, (d / mu) * np.exp(1 - d / mu)], 1)
    s0_inv = np.diag(1 / np.square([0.1, 0.3, 0.3]))
    noise2 = curve.noise_sd**2
    w = np.linalg.solve(s0_inv + phi.T @ phi / noise2, s0_inv @ np.array(PRIOR_CURVE) + phi.T @ y / noise2)
    assert_allclose(curve.coefficients, w, rtol=1e-10)


def test_the_prior_decays_for_distant_domains_instead_of_predicting_a_gain() -> None:
    far, near = predict_forgetting(fit_forgetting_curve([], []), [1.4, 0.05])
    assert 0 <= far.loss < 0.01 and 0 < near.loss < PRIOR_PEAK_LOSS


def test_a_monotone_history_is_not_reported_as_an_inverted_u() -> None:
    d = np.tile(np.linspace(0.0, 1.0, 6), 5)
    curve = fit_forgetting_curve(d, 0.05 + 0.3 * d)
    assert not curve.inverted_u


def test_bad_history_and_confidence_are_refused() -> None:
    with pytest.raises(ValueError, match="one loss per distance"):
        fit_forgetting_curve([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="finite"):
        fit_forgetting_curve([0.1], [np.nan])
    with pytest.raises(ValueError, match=">= 0"):
        fit_forgetting_curve([-0.1], [0.1])
    with pytest.raises(ValueError, match="confidence"):
        predict_forgetting(fit_forgetting_curve([], []), [0.1], confidence=1.0)
