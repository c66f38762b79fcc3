"""Held-out evaluation of the alarms and the conformal threshold (`drift.evaluation`)."""

import math
from dataclasses import replace

import numpy as np
import pytest

from drift.evaluation import RunTrace, alarm_threshold, conformal_threshold, evaluate, first_alarm, held_out


def trace(name, forecast, *, onset=None, detected=None, family="f", method="m", drop=None):
    n = len(forecast)
    return RunTrace(name, family, method, tuple(forecast), tuple(detected or [False] * n),
                    tuple(drop or [0.01 * i for i in range(n)]), tuple(0.001 * i for i in range(n)), onset)


def test_conformal_threshold_lets_at_most_alpha_of_new_quiet_runs_alarm():
    scores = [i / 20 for i in range(19)]  # 19 runs: the 18th smallest maximum is the quantile at 10 %
    threshold = conformal_threshold(scores, alpha=0.1)
    assert scores[17] < threshold < scores[17] + 1e-12
    assert sum(s >= threshold for s in scores) == 1  # the largest run alone, 1/19 ≤ 10 %
    # Too few runs for the guarantee: no threshold, rather than a relaxed one.
    assert conformal_threshold(scores[:8], alpha=0.1) is None
    with pytest.raises(ValueError):
        conformal_threshold(scores, alpha=0)


def test_the_alarm_threshold_never_falls_to_the_forecast_of_a_run_that_has_not_changed():
    flat = [0.02] * 30  # calibration runs cleaner than the noise floor of a coarse probe set
    assert conformal_threshold(flat, alpha=0.1) < 0.03
    threshold = alarm_threshold(flat, alpha=0.1, floor=0.2)
    assert 0.2 < threshold < 0.2 + 1e-12  # strictly above: a forecast equal to the floor does not alarm
    assert alarm_threshold([0.5] * 30, alpha=0.1, floor=0.2) > 0.5  # the quantile when it is higher
    assert alarm_threshold(flat[:8], alpha=0.1, floor=0.2) is None  # too few runs: no guarantee, no threshold
    quiet = [trace(f"q{i}{g}", [None, None, 0.02, peak], method=g) for i in range(10) for g, peak in (("a", 0.02),
                                                                                                  ("b", 0.1))]
    assert held_out(quiet, by="method", floor=0.0).false_alarm_runs == 0.5  # b, judged on a's clean runs
    assert held_out(quiet, by="method", floor=0.2).false_alarm_runs == 0.0


def test_first_alarm_is_a_detection_or_a_forecast_at_the_threshold():
    t = trace("a", [None, 0.2, 0.6, None], detected=[False, False, False, True])
    assert first_alarm(t, 0.5) == 2
    assert first_alarm(t, 0.7) == 3
    assert first_alarm(t, None) == 3  # without a threshold only detection alarms


def test_metrics_on_hand_made_runs():
    early = trace("early", [None, None, 0.2, 0.7, 0.9, None], onset=5, detected=[False] * 5 + [True])
    late = trace("late", [None, None, 0.1, 0.2, None], onset=4, detected=[False] * 4 + [True])
    quiet = trace("quiet", [None, None, 0.1, 0.1, 0.6, 0.1, 0.1])
    calm = trace("calm", [None, None, 0.0, 0.0, 0.0, 0.0, 0.0])
    result = evaluate([early, late, quiet, calm], [0.5] * 4, horizon=3)
    assert result.n_forgetting == 2 and result.threshold == 0.5
    assert result.early2_share == 0.5  # early alarmed at 3 (2 before onset 5), late only at its onset
    assert result.median_lead_ckpts == 1.0  # leads 2 and 0
    assert result.false_alarm_runs == 0.5  # quiet alarmed at 4
    assert result.detect_rate == 1.0
    # Risk set: early 0..4, late 0..3, quiet 0..3, calm 0..3 (the last 3 of quiet runs are unobserved).
    assert result.risk_set_size == 17 and math.isclose(result.forecast_coverage, 9 / 17)
    assert 0.5 < result.auc_h3 <= 1.0
    assert "risk_heldout families=1 methods=1 auc_h3=" in result.line()


def test_held_out_judges_each_group_with_a_threshold_calibrated_on_the_others():
    quiet = [trace(f"q{i}{g}", [None, None, 0.05 * i, 0.05 * i, 0.0], method=g) for i in range(10) for g in "ab"]
    loud = trace("loud", [None, None, 0.9, 0.9, 0.9], method="b")  # never forgets, but its forecast is high
    result = held_out([*quiet, loud], by="method", alpha=0.1)
    assert result.false_alarm_runs == pytest.approx(1 / 21)  # loud alone, judged on group a's threshold
    single = held_out(quiet, by="family")
    assert "nothing held out" in single.split and single.false_alarm_runs is None and single.early2_share is None


def test_hazard_model_learns_onset_from_the_risk_set_and_scores_held_out_runs():
    from drift.hazard import HazardModel, hazard_rows
    from drift.hazard_heldout import held_out_auc

    def run(name, rate, method, onset):
        drops = [rate * i for i in range(10)]
        return trace(name, [None, None, *[0.1 + rate] * 8], onset=onset, method=method, drop=drops)

    runs = [run(f"{m}{k}", 0.02 * k, m, None if k == 0 else max(3, min(9, round(0.1 / (0.02 * k)) + 1)))
            for m in "abc" for k in range(5)]
    rows = hazard_rows(runs[1])
    assert [i for i, _, _ in rows] == list(range(2, runs[1].onset))  # the risk set: before the onset only
    assert [e for _, _, e in rows][-1] == 1 and sum(e for _, _, e in rows) == 1
    model = HazardModel().fit(runs)
    fast, slow = model.within(runs[4], horizon=3), model.within(runs[1], horizon=3)
    assert max(fast.values()) > max(slow.values())
    hazard_auc, trend_auc, n = held_out_auc(runs, by="method")
    assert n > 0 and 0.5 < hazard_auc <= 1.0 and trend_auc is not None
    with pytest.raises(ValueError, match="events"):
        HazardModel().fit([runs[0]])


def test_hazard_2_reads_a_moving_distribution_before_the_answers_fall():
    """Forgetting runs whose ood KL share climbs while their answers still hold: hazard/2 (with KL share)
    ranks and alarms ahead of the onset on held-out families; hazard/1 (drops only) cannot."""
    from drift.hazard_heldout import held_out_alarms, held_out_auc

    rng = np.random.default_rng(0)

    def run(name, family, forgets):
        n = 12
        onset = 7 if forgets else None
        drop = [float(rng.normal(0, 0.01)) + (0.3 if forgets and i >= onset else 0.0) for i in range(n)]
        share = [float(abs(rng.normal(0.02, 0.005))) + (0.15 * i if forgets else 0.0) for i in range(n)]
        forecast = tuple(None if i < 2 else 0.1 for i in range(n))
        return RunTrace(name, family, "m", forecast, tuple([False] * n), tuple(drop), tuple(share), onset)

    runs = [run(f"{f}{k}", f, k < 6) for f in "abc" for k in range(18)]
    with_kl, _, n = held_out_auc(runs, by="family", inputs="hazard/2")
    drops_only, _, _ = held_out_auc(runs, by="family", inputs="hazard/1")
    assert n > 0 and with_kl > 0.9 and with_kl > drops_only + 0.2
    record = held_out_alarms(runs, by="family", inputs="hazard/2")
    assert record is not None and record.families == 3
    assert record.early2_share >= 0.8 and record.false_alarm_runs <= 0.2
    assert held_out_alarms([r for r in runs if r.family == "a"], by="family") is None  # nothing to hold out


def test_hazard_3_reads_the_drops_in_units_of_their_own_noise():
    """Quiet runs on coarse probe sets wander as far as forgetting runs on fine ones climb before their
    onset: hazard/1 (raw drops) cannot tell them apart, hazard/3 (gap and slope over the spread) can."""
    from drift.hazard import hazard_rows
    from drift.hazard_heldout import held_out_alarms, held_out_auc

    rng = np.random.default_rng(1)

    def run(name, family, forgets):
        n = 12
        onset = 8 if forgets else None
        sd = 0.005 if forgets else 0.03
        drop = [0.01 * i + float(rng.normal(0, sd)) if forgets else float(rng.normal(0.03, sd)) for i in range(n)]
        if forgets:
            drop[onset:] = [0.3] * (n - onset)
        forecast = tuple(None if i < 2 else 0.1 for i in range(n))
        return RunTrace(name, family, "m", forecast, tuple([False] * n), tuple(drop), tuple([0.0] * n), onset,
                        tuple([sd] * n))

    runs = [run(f"{f}{k}", f, k < 6) for f in "abc" for k in range(18)]
    scaled, _, n = held_out_auc(runs, by="family", inputs="hazard/3")
    raw, _, _ = held_out_auc(runs, by="family", inputs="hazard/1")
    assert n > 0 and scaled > 0.9 and scaled > raw
    record = held_out_alarms(runs, by="family", inputs="hazard/3")
    assert record is not None and record.false_alarm_runs <= 0.2 and record.detect_rate == 1.0
    assert record.early2_share >= 0.8 and held_out_alarms(runs, by="family", inputs="hazard/1").early2_share < 0.5
    (i, x, _), *_ = hazard_rows(runs[0], inputs="hazard/3", threshold=0.1)
    assert i == 2 and x[0] == pytest.approx((0.1 - runs[0].drop[2]) / 0.005)  # gap to the threshold in sds
    with pytest.raises(ValueError, match="spreads"):
        hazard_rows(replace(runs[0], drop_sd=()), inputs="hazard/3")


def test_refit_shrinks_toward_the_shipped_threshold_and_says_when_it_is_worse():
    from drift.evaluation import refit, why_worse

    shipped = [0.2 + 0.01 * i for i in range(30)]  # the shipped corpus's quiet maxima, 0.20 .. 0.49
    quiet = [trace(f"q{i}", [None, None, 0.3, 0.35, 0.3, 0.3, 0.3]) for i in range(3)]
    late = [trace(f"f{i}", [None, None, 0.4, 0.6, 0.65, 0.8, 0.9], onset=6) for i in range(3)]
    threshold, refitted, record = refit(quiet + late, shipped_maxima=shipped, shipped_threshold=0.69)
    assert threshold == pytest.approx(conformal_threshold([0.35] * 3 + shipped))  # pooled, not the 3 alone
    assert 0.47 < threshold < 0.5
    assert refitted.early2_share == 1.0 and record.early2_share == 0.0  # refit alarms at index 3, shipped at 5
    assert refitted.false_alarm_runs == 0.0 and why_worse(refitted, record) is None
    # A threshold that alarms on quiet runs more than allowed is refused, with the reason.
    noisy = [trace(f"n{i}", [None, None, 0.3, 0.8, 0.3, 0.3, 0.3]) for i in range(3)]
    _, refitted, record = refit(noisy + late, shipped_maxima=[0.1] * 30, shipped_threshold=0.9)
    assert refitted.false_alarm_runs == 1.0 and "never forgot alarmed" in why_worse(refitted, record)
