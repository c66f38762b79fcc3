"""Detection and forecast of ood forgetting (`drift.alarms`)."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from drift.alarms import (
    REASONS,
    RelativeDrop,
    first_detection,
    forecast_detection,
    measured_drop,
    no_change_ceiling,
    relative_drop,
    worst_drop,
)
from drift.features import FEATURES


def drop(value: float, half_width: float = 0.02, *, n_items: int = 64, base: float = 0.8) -> RelativeDrop:
    return RelativeDrop("ood", "accuracy", value, value - half_width, value + half_width, base, n_items)


def test_relative_drop_turns_a_change_and_its_interval_into_a_share_of_the_base():
    d = relative_drop(probe_set="p", metric="accuracy", base=0.8, change=-0.2, ci_low=-0.3, ci_high=-0.1, n_items=64)
    assert_allclose([d.drop, d.low, d.high], [0.25, 0.125, 0.375])
    ll = relative_drop(probe_set="p", metric="loglik", base=-2.0, change=-0.5, ci_low=-0.6, ci_high=-0.4, n_items=9)
    assert_allclose([ll.drop, ll.low, ll.high], [0.25, 0.2, 0.3])


@pytest.mark.parametrize("kwargs", [{"base": 0.0}, {"change": math.nan}, {"ci_low": 0.1, "ci_high": -0.1}])
def test_relative_drop_rejects_a_zero_base_nan_and_a_reversed_interval(kwargs):
    args = {"probe_set": "p", "metric": "accuracy", "base": 0.8, "change": -0.1, "ci_low": -0.2, "ci_high": 0.0,
            "n_items": 64}
    with pytest.raises(ValueError):
        relative_drop(**{**args, **kwargs})


def test_measured_drop_says_why_a_probe_set_cannot_anchor_a_drop():
    ok = (0.8, -0.2, -0.3, -0.1)
    assert measured_drop(probe_set="p", n_items=3, accuracy=ok, loglik=None) == (None, "too_few_items")
    assert measured_drop(probe_set="p", n_items=64, accuracy=(0.8, math.nan, -0.3, -0.1), loglik=None) == (
        None, "non_finite")
    # A base that gets nothing right and a log-likelihood of ~0 give no relative drop.
    assert measured_drop(probe_set="p", n_items=64, accuracy=(0.0, 0.0, 0.0, 0.0),
                         loglik=(-0.001, 0.0, 0.0, 0.0)) == (None, "base_unusable")
    found, why = measured_drop(probe_set="p", n_items=64, accuracy=(0.0, 0.0, 0.0, 0.0), loglik=(-2.0, -0.4, -0.5, -0.3))
    assert why is None and found.metric == "loglik" and found.drop == pytest.approx(0.2)


def test_detection_needs_the_whole_interval_past_the_threshold():
    noisy = drop(0.15, half_width=0.10)  # point estimate past 10 %, interval not
    sure = drop(0.15, half_width=0.04)
    assert first_detection([drop(0.0), noisy], threshold=0.1) is None
    assert first_detection([drop(0.0), noisy, None, sure], threshold=0.1) == 3
    assert worst_drop([noisy, sure]) is sure


def test_a_run_that_has_not_moved_gets_a_forecast_near_zero():
    still = [RelativeDrop("ood", "accuracy", 0.0, 0.0, 0.0, 0.9, 64)] * 6
    f = forecast_detection([10, 20, 30, 40, 50, 60], still, threshold=0.1)
    assert f.applicable and f.probability < 0.05 and f.checkpoints_to_crossing is None


def test_a_steady_rise_toward_the_threshold_is_predicted_before_it_is_detected():
    values = [0.0, 0.02, 0.035, 0.06, 0.08, 0.09]  # interval ±0.02: detection needs 0.12
    drops = [drop(v) for v in values]
    assert first_detection(drops, threshold=0.1) is None
    f = forecast_detection([100 * (i + 1) for i in range(6)], drops, threshold=0.1)
    assert f.applicable and f.probability > 0.5
    slower = forecast_detection([100 * (i + 1) for i in range(6)], [drop(v / 3) for v in values], threshold=0.1)
    assert slower.probability < 0.1
    assert 0 < f.checkpoints_to_crossing_low <= f.checkpoints_to_crossing <= 6
    assert f.steps_per_checkpoint == 100


def test_the_horizon_runs_at_the_current_checkpoint_cadence():
    """Dense early checkpoints, then every 10 steps: the next checkpoints are 10 steps apart, so the
    same drops per step forecast a crossing 10 steps a checkpoint, not 2."""
    steps = [4, 6, 8, 10, 20, 30]
    drops = [drop(0.0025 * s, half_width=0.01) for s in steps]  # 0.025 per 10 steps; 0.075 at step 30
    f = forecast_detection(steps, drops, threshold=0.1)
    assert f.steps_per_checkpoint == 10
    regular = forecast_detection([30 - 10 * k for k in range(5, -1, -1)], [drop(0.0025 * (30 - 10 * k), half_width=0.01)
                                                                           for k in range(5, -1, -1)], threshold=0.1)
    assert f.slope_per_checkpoint == pytest.approx(0.025) == pytest.approx(regular.slope_per_checkpoint)
    assert f.checkpoints_to_crossing == pytest.approx(regular.checkpoints_to_crossing)


def test_probability_matches_the_linear_regression_prediction_interval():
    steps = [1, 2, 3, 4]
    ys = [0.0, 0.02, 0.01, 0.04]
    f = forecast_detection(steps, [drop(y, half_width=0.0) for y in ys], threshold=0.1, horizon=2)
    u = np.array([-3.0, -2.0, -1.0, 0.0])
    b, a = np.polyfit(u, ys, 1)
    resid = np.array(ys) - (a + b * u)
    s2 = max(resid @ resid / 2, (0.5 / (64 * 0.8)) ** 2)
    sxx = ((u - u.mean()) ** 2).sum()
    expected = max(stats.t.sf((0.1 - (a + b * k)) / math.sqrt(s2 * (1 + 1 / 4 + (k - u.mean()) ** 2 / sxx)), 2)
                   for k in (1, 2))
    assert f.probability == pytest.approx(expected, rel=1e-9)
    assert f.slope_per_checkpoint == pytest.approx(b)


@pytest.mark.parametrize(
    ("drops", "code"),
    [
        ([drop(0.0)] * 2, "too_few_checkpoints"),
        ([drop(0.0), drop(0.0), None], "not_measured"),
        ([drop(0.0), drop(0.2), drop(0.0)], "detected"),
        ([drop(0.0), drop(0.01), RelativeDrop("ood", "accuracy", math.nan, 0.0, 0.0, 0.8, 64)], "non_finite"),
        # 8 right answers of 16: one item is 12.5 % of the base's score, more than the threshold's margin
        ([drop(0.0, half_width=0.0, n_items=16, base=0.5)] * 4, "too_coarse"),
    ],
)
def test_the_forecast_abstains_with_a_reason_instead_of_guessing(drops, code):
    f = forecast_detection(list(range(1, len(drops) + 1)), drops, threshold=0.1)
    assert not f.applicable and f.probability is None
    assert f.reason_code == code and f.reason.startswith(REASONS[code])


def test_a_probe_set_needs_about_twenty_right_answers_at_the_base_for_a_forecast():
    """Below that, half an item of noise floor and a line through 3-6 points gave a run whose answers
    never changed a forecast of ~0.35 (bench.forecast_noise: every such run alarmed)."""
    still = [drop(0.0, half_width=0.0, n_items=40, base=0.5)] * 4  # 20 right answers
    assert forecast_detection([1, 2, 3, 4], still, threshold=0.1).applicable
    coarse = [drop(0.0, half_width=0.0, n_items=38, base=0.5)] * 4  # 19
    f = forecast_detection([1, 2, 3, 4], coarse, threshold=0.1)
    assert f.reason_code == "too_coarse" and "about 20 items the base answers right" in f.reason
    assert first_detection([drop(0.5, half_width=0.1, n_items=16, base=0.5)], threshold=0.1) == 0  # still detected


def test_no_run_whose_probes_have_not_changed_gets_a_forecast_above_the_ceiling():
    """Every probe set the forecast accepts, every base accuracy, 3-8 checkpoints: a run whose answers
    never changed stays at or below `no_change_ceiling`, and the coarsest accepted set reaches it."""
    ceiling = no_change_ceiling(threshold=0.1)
    highest = 0.0
    for n_items in (10, 20, 21, 32, 40, 64, 256):
        for right in range(1, n_items + 1):
            for k in range(3, 9):
                f = forecast_detection(list(range(k)), [drop(0.0, 0.0, n_items=n_items, base=right / n_items)] * k,
                                       threshold=0.1)
                if f.applicable:
                    highest = max(highest, f.probability)
    assert highest == pytest.approx(ceiling, rel=1e-12) and 0.1 < ceiling < 0.3
    assert no_change_ceiling(threshold=0.1, horizon=6) > ceiling  # a longer horizon reaches further


def test_a_single_checkpoint_never_gets_a_forecast():
    f = forecast_detection([5], [drop(0.09)], threshold=0.1)
    assert f.reason_code == "too_few_checkpoints"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        forecast_detection([1, 2, 3], [drop(0)] * 3, threshold=10)
    with pytest.raises(ValueError, match="increasing"):
        forecast_detection([1, 1, 3], [drop(0)] * 3, threshold=0.1)
    with pytest.raises(ValueError, match="equal length"):
        forecast_detection([1, 2], [drop(0)] * 3, threshold=0.1)


def test_every_declared_feature_has_a_unit_and_a_reason_it_transfers():
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    assert all(f.unit and len(f.transfers) > 40 for f in FEATURES)
    from drift.hazard import INPUTS

    assert set(INPUTS["hazard/3"]) <= set(names)  # the served model reads declared features only
