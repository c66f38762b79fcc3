import math

import pytest

from drift.compare import Estimate, at_gain, at_step, combine, pareto_efficient

STEPS = [0, 100, 200]
GAINS = [Estimate(0.0, 0.0, 0.0), Estimate(0.2, 0.1, 0.3), Estimate(0.4, 0.3, 0.6)]
LOSSES = [Estimate(0.0, 0.0, 0.0), Estimate(0.1, 0.05, 0.2), Estimate(0.5, 0.4, 0.7)]


def test_at_step_interpolates_values_and_interval_bounds_linearly():
    m = at_step(STEPS, GAINS, LOSSES, step=150)
    assert m is not None and m.step == 150
    assert (m.gain.value, m.gain.low, m.gain.high) == pytest.approx((0.3, 0.2, 0.45))
    assert (m.loss.value, m.loss.low, m.loss.high) == pytest.approx((0.3, 0.225, 0.45))
    assert at_step(STEPS, GAINS, LOSSES, step=100).loss == LOSSES[1]  # a checkpoint: its own values


def test_at_step_never_extrapolates():
    assert at_step(STEPS, GAINS, LOSSES, step=201) is None
    assert at_step(STEPS, GAINS, LOSSES, step=-1) is None


def test_at_gain_reads_the_first_crossing_of_a_non_monotone_gain():
    gains = [Estimate(0.0), Estimate(0.4), Estimate(0.2), Estimate(0.5)]
    losses = [Estimate(0.0), Estimate(0.2), Estimate(0.3), Estimate(0.6)]
    m = at_gain([0, 100, 200, 300], gains, losses, gain=0.3)
    # first segment past 0.3 is 0 → 100: weight 0.75
    assert m is not None and m.step == pytest.approx(75) and m.loss.value == pytest.approx(0.15)
    assert m.loss.low is None  # no interval stored: none invented
    m = at_gain(STEPS, GAINS, LOSSES, gain=0.3)
    assert m is not None and m.step == pytest.approx(150)
    assert (m.loss.value, m.loss.low, m.loss.high) == pytest.approx((0.3, 0.225, 0.45))
    assert at_gain(STEPS, GAINS, LOSSES, gain=0.41) is None


def test_inputs_out_of_step_order_or_not_finite_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        at_step([0, 200, 100], GAINS, LOSSES, step=50)
    with pytest.raises(ValueError, match="finite"):
        at_gain(STEPS, [Estimate(math.nan), *GAINS[1:]], LOSSES, gain=0.1)


def test_combine_averages_and_adds_half_widths_in_quadrature():
    e = combine([Estimate(0.1, 0.0, 0.2), Estimate(0.3, 0.2, 0.5)])
    assert e is not None
    assert e.value == pytest.approx(0.2)
    assert e.low == pytest.approx(0.2 - math.sqrt(0.01 + 0.01) / 2)
    assert e.high == pytest.approx(0.2 + math.sqrt(0.01 + 0.04) / 2)
    assert combine([Estimate(0.1, 0.0, 0.2), Estimate(0.3)]) == Estimate(0.2)
    assert combine([]) is None


def test_pareto_efficient_runs_are_those_no_other_run_dominates():
    gains = [0.5, 0.4, 0.6, 0.5, math.nan, 0.1]
    losses = [0.1, 0.2, 0.3, 0.1, 0.0, 0.0]
    # 0.4/0.2 is dominated by 0.5/0.1; two identical points do not dominate each other; NaN is out;
    # 0.1/0.0 has the least loss
    assert pareto_efficient(gains, losses) == [True, False, True, True, False, True]
