import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from drift.forecast import feature_rows, page_hinkley, theil_sen_forecast

STEPS = [0, 100, 200, 300, 400, 500, 600]


def _line(steps=STEPS, a=1.0, b=0.01):
    return [a + b * s for s in steps]


# ----------------------------------------------------------------------------- Theil–Sen forecast
def test_forecast_on_an_exact_line_gives_the_exact_steps_to_threshold():
    fc = theil_sen_forecast(STEPS, _line(), threshold=10.0)  # 1 + 0.01·s reaches 10 at s = 900
    assert_allclose([fc.slope, fc.intercept], [0.01, 1.0])
    assert fc.last_step == 600 and fc.n_points == 7 and not fc.crossed
    assert_allclose(fc.steps_to_threshold, 300.0)


def test_forecast_downward_threshold():
    values = [0.8 - 0.0005 * s for s in STEPS]  # 0.5 at s = 600, 0.4 at s = 800
    fc = theil_sen_forecast(STEPS, values, threshold=0.4, direction="down")
    assert_allclose(fc.steps_to_threshold, 200.0)


def test_forecast_ignores_one_outlier():
    values = _line()
    values[2] = 100.0
    fc = theil_sen_forecast(STEPS, values, threshold=10.0)
    assert_allclose(fc.slope, 0.01)
    assert_allclose(fc.steps_to_threshold, 300.0, rtol=0.05)
    ols = np.polyfit(STEPS, values, 1)[0]
    assert abs(ols - 0.01) > 0.01  # least squares would be thrown far off


def test_forecast_matches_scipy_theilslopes_on_noisy_data():
    rng = np.random.default_rng(0)
    y = 2.0 + 0.003 * np.array(STEPS) + rng.normal(0, 0.1, len(STEPS))
    fc = theil_sen_forecast(STEPS, y, threshold=50.0)
    slope, intercept, _, _ = stats.theilslopes(y, STEPS, method="joint")
    assert_allclose([fc.slope, fc.intercept], [slope, intercept])
    assert_allclose(fc.steps_to_threshold, (50.0 - (intercept + slope * 600)) / slope)


@pytest.mark.parametrize("values", [[2.0] * 7, [2.0 - 0.001 * s for s in STEPS]], ids=["flat", "moving_away"])
def test_forecast_is_none_when_flat_or_moving_away(values):
    fc = theil_sen_forecast(STEPS, values, threshold=10.0)
    assert fc.steps_to_threshold is None and not fc.crossed


def test_forecast_is_none_with_too_few_points_and_skips_missing_values():
    fc = theil_sen_forecast([0, 100, 200], [1.0, None, 2.0], threshold=10.0)
    assert fc.n_points == 2 and fc.steps_to_threshold is None
    assert_allclose(fc.slope, 0.005)
    fc = theil_sen_forecast([0, 100, 200], [1.0, None, 2.0], threshold=10.0, min_points=2)
    assert_allclose(fc.steps_to_threshold, 1600.0)


def test_forecast_already_crossed_is_zero():
    fc = theil_sen_forecast(STEPS, _line(), threshold=5.0)
    assert fc.crossed and fc.steps_to_threshold == 0.0
    fc = theil_sen_forecast([0], [7.0], threshold=5.0)  # a single point can still be past it
    assert fc.crossed and fc.steps_to_threshold == 0.0 and fc.slope == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": [0, 0, 1], "values": [1, 2, 3]}, "strictly increasing"),
    ({"steps": [0, 1], "values": [1, 2, 3]}, "equal length"),
    ({"steps": [0, 1], "values": [None, float("nan")]}, "no finite values"),
    ({"steps": [0, 1], "values": [1, 2], "direction": "sideways"}, "direction"),
])
def test_forecast_rejects_bad_input(kwargs, match):
    kwargs.setdefault("threshold", 1.0)
    with pytest.raises(ValueError, match=match):
        theil_sen_forecast(kwargs.pop("steps"), kwargs.pop("values"), **kwargs)


# ----------------------------------------------------------------------------- Page–Hinkley
def _step_series(seed, n=60, at=30, shift=0.5, sd=0.1, level=1.0):
    x = np.random.default_rng(seed).normal(level, sd, n)
    x[at:] += shift
    return x


def test_page_hinkley_finds_a_step_change_at_the_right_index():
    for seed in range(20):
        cp = page_hinkley(_step_series(seed), delta=0.5, threshold=8.0)
        assert cp.index is not None and abs(cp.index - 30) <= 1, (seed, cp)
        assert cp.index <= cp.alarm_index <= 33


def test_page_hinkley_detects_downward_changes_only_when_asked():
    x = _step_series(1, shift=-0.5)
    assert page_hinkley(x, delta=0.5, threshold=8.0, direction="up").index is None
    assert page_hinkley(x, delta=0.5, threshold=8.0, direction="down").index == 30


def test_page_hinkley_is_invariant_to_scale():
    x = _step_series(2)
    a = page_hinkley(x, delta=0.5, threshold=8.0)
    b = page_hinkley(1e-4 * x, delta=0.5, threshold=8.0)  # an offset would move the relative floor
    assert (a.index, a.alarm_index) == (b.index, b.alarm_index)
    assert_allclose(a.statistic, b.statistic, rtol=1e-6)


def test_page_hinkley_false_alarm_rate_on_stationary_noise_is_low():
    alarms = sum(page_hinkley(np.random.default_rng(seed).normal(1.0, 0.1, 40), delta=0.5, threshold=8.0)
                 .index is not None for seed in range(200))
    assert alarms / 200 <= 0.05


def test_page_hinkley_on_degenerate_series():
    cp = page_hinkley([0.3] * 20, delta=0.5, threshold=8.0)
    assert cp.index is None and math.isfinite(cp.statistic) and cp.scale > 0
    assert page_hinkley([1.0], delta=0.5, threshold=8.0).index is None
    # missing values are skipped and indices still refer to the input positions
    x = [0.0 + 0.001 * (i % 3) for i in range(10)] + [None] + [1.0] * 5
    assert page_hinkley(x, delta=0.5, threshold=8.0).index == 11


# ----------------------------------------------------------------------------- trend features
def test_feature_rows_add_slopes_ratios_and_meta_keys():
    steps = [0, 100, 250, 400, 600]
    kl = [0.01, 0.02, 0.015, 0.05, 0.08]
    history = [{"kl_fwd_ood": v, "acc_change_in": 0.01 * i, "embed_auc": None, "nonfinite_names": ["x"]}
               for i, v in enumerate(kl)]
    history[3]["distinct2"], history[3]["distinct2_base"] = 0.3, 0.6
    rows = feature_rows(history, steps, window=4)
    assert [r["n_checkpoints"] for r in rows] == [1, 2, 3, 4, 5]
    assert "kl_fwd_ood_slope" not in rows[0] and "embed_auc" not in rows[0]
    expected = stats.theilslopes(kl[1:5], steps[1:5])[0] * 1000
    assert_allclose(rows[4]["kl_fwd_ood_slope"], expected)
    assert_allclose(rows[4]["kl_fwd_ood_log_ratio_first"], math.log(8.0))
    assert "acc_change_in_log_ratio_first" not in rows[4]  # signed change: no ratio
    assert_allclose(rows[4]["acc_change_in_slope"], 0.01 / 150 * 1000 * 1.0, rtol=0.3)
    assert_allclose(rows[3]["distinct2_ratio_base"], 0.5)
    assert "distinct2_slope" not in rows[3]  # one point only


def test_feature_rows_tolerate_missing_values_in_the_window():
    history = [{"param_rel_l2": 0.0}, {"param_rel_l2": None}, {}, {"param_rel_l2": 0.03}]
    rows = feature_rows(history, [0, 10, 20, 30])
    assert_allclose(rows[3]["param_rel_l2_slope"], 1.0)  # 0.03 per 30 steps = 1 per 1000
    assert "param_rel_l2_log_ratio_first" not in rows[3]  # the first value is 0


def test_feature_rows_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        feature_rows([{}], [0, 1])
