import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import optimize, stats

from drift.entropy_ceiling import fit_entropy_ceiling, values_at_steps


def test_exact_relation_recovers_a_b_and_the_ceiling():
    h = np.array([1.0, 0.8, 0.5, 0.3, 0.1])
    fit = fit_entropy_ceiling(h, -0.2 * np.exp(h) + 0.9)
    assert fit.applicable and fit.n_points == 5
    assert_allclose([fit.a, fit.b, fit.ceiling, fit.r2], [0.2, 0.9, 0.7, 1.0], atol=1e-12)
    assert_allclose([fit.ceiling_low, fit.ceiling_high], [0.7, 0.7], atol=1e-9)


def test_noisy_fit_matches_nonlinear_least_squares_and_the_covariance_of_the_prediction():
    rng = np.random.default_rng(0)
    h = np.linspace(1.2, 0.2, 12)
    r = -0.3 * np.exp(h) + 1.1 + rng.normal(0, 0.02, len(h))
    fit = fit_entropy_ceiling(h, r, confidence=0.9)
    (a, b), _ = optimize.curve_fit(lambda x, a, b: -a * np.exp(x) + b, h, r, p0=(1.0, 1.0))
    assert_allclose([fit.a, fit.b], [a, b], rtol=1e-6)
    # the prediction at exp(H) = 1 from the OLS covariance matrix, computed independently
    x = np.column_stack([np.ones_like(h), np.exp(h)])
    _, res, *_ = np.linalg.lstsq(x, r, rcond=None)
    cov = res[0] / (len(h) - 2) * np.linalg.inv(x.T @ x)
    se = np.sqrt(np.array([1.0, 1.0]) @ cov @ np.array([1.0, 1.0]))
    half = stats.t.ppf(0.95, len(h) - 2) * se
    assert_allclose([fit.ceiling_low, fit.ceiling_high], [b - a - half, b - a + half], rtol=1e-6)


@pytest.mark.parametrize(
    ("h", "r", "reason"),
    [
        ([1.0, 0.5, 0.2], [0.1, 0.3, 0.4], "needs at least 4"),
        ([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], "entropy spans less"),
        ([1.0, 0.8, 0.5, 0.2], [0.5, 0.4, 0.3, 0.2], "does not rise as entropy falls"),
        ([1.0, float("nan"), 0.5, 0.2], [0.1, 0.2, 0.3, 0.4], "NaN"),
        ([1.0, -0.1, 0.5, 0.2], [0.1, 0.2, 0.3, 0.4], "negative"),
    ],
)
def test_the_fit_abstains_with_a_reason(h, r, reason):
    fit = fit_entropy_ceiling(h, r)
    assert not fit.applicable and reason in (fit.reason or "") and fit.ceiling is None


def test_values_at_steps_takes_the_latest_value_at_or_before_each_step_in_any_input_order():
    assert values_at_steps([30, 10, 20], [3.0, 1.0, 2.0], [5, 10, 25, 40]) == [None, 1.0, 2.0, 3.0]
