import json
import math
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

from drift.risk import (
    HEURISTIC_REFS,
    RiskModel,
    _lead_times,
    evaluate_leave_one_run_out,
    feature_rows,
    heuristic_risk,
    label_future_forgetting,
    last_safe_step,
)

BASE_ACC = 0.6


def _synthetic_runs(n_runs=30, n_ckpt=10, seed=0):
    """Runs whose ood accuracy falls in proportion to ood KL; the KL rate varies by run."""
    rng = np.random.default_rng(seed)
    rows, labels, groups, steps, dropped = [], [], [], [], []
    for run in range(n_runs):
        rate = rng.uniform(0.0, 0.04)  # ood KL per checkpoint
        st = [100 * (i + 1) for i in range(n_ckpt)]
        kl = np.maximum(1e-4, rate * np.arange(1, n_ckpt + 1) + rng.normal(0, 0.003, n_ckpt))
        acc = BASE_ACC - 0.3 * kl + rng.normal(0, 0.005, n_ckpt)
        history = [{"kl_fwd_ood": float(kl[i]), "kl_fwd_in": float(rng.uniform(0.2, 0.4)),
                    "param_rel_l2": float(0.002 * (i + 1) * (0.5 + 20 * rate) + rng.normal(0, 1e-4)),
                    "acc_change_ood": float(acc[i] - BASE_ACC), "distinct2": float(rng.uniform(0.5, 0.6))}
                   for i in range(n_ckpt)]
        rows += feature_rows(history, st)
        labels += label_future_forgetting(acc, base=BASE_ACC, horizon=3)
        dropped += label_future_forgetting(acc, base=BASE_ACC, horizon=0)
        groups += [f"run{run}"] * n_ckpt
        steps += st
    return rows, labels, groups, steps, dropped


@pytest.fixture(scope="module")
def data():
    return _synthetic_runs()


@pytest.fixture(scope="module")
def model(data):
    rows, labels, groups, _, _ = data
    return RiskModel().fit(rows, labels, groups)


# ----------------------------------------------------------------------------- labels
def test_labels_look_ahead_over_the_horizon_inclusive():
    acc = [0.60, 0.58, 0.55, 0.53, 0.59, 0.50, None]  # base 0.6: a drop is ≤ 0.54
    assert label_future_forgetting(acc, base=0.6, horizon=2) == [0, 1, 1, 1, 1, 1, 0]
    assert label_future_forgetting(acc, base=0.6, horizon=1) == [0, 0, 1, 1, 1, 1, 0]
    assert label_future_forgetting(acc, base=0.6, horizon=0) == [0, 0, 0, 1, 0, 1, 0]


def test_labels_treat_an_exact_ten_percent_drop_as_forgetting_and_work_on_log_likelihood():
    assert label_future_forgetting([0.45], base=0.5, horizon=0) == [1]  # 0.5 − 0.45 is 0.0499999…
    loglik = [-2.05, -2.15, -2.25]  # base −2.0: a drop is ≤ −2.2
    assert label_future_forgetting(loglik, base=-2.0, horizon=0) == [0, 0, 1]


def test_labels_reject_a_zero_base():
    with pytest.raises(ValueError, match="nonzero"):
        label_future_forgetting([0.1], base=0.0)


# ----------------------------------------------------------------------------- model
def test_model_separates_forgetting_runs_on_held_out_runs(data):
    rows, labels, groups, steps, dropped = data
    ev = evaluate_leave_one_run_out(rows, labels, groups, steps, dropped=dropped)
    assert ev.roc_auc > 0.9
    assert (ev.n_runs, ev.n_checkpoints) == (30, 300)
    assert ev.n_scored == 270  # first checkpoints are not applicable
    assert_allclose(ev.positive_rate, np.mean(labels))
    assert ev.n_forgetting_runs == len({g for g, d in zip(groups, dropped) if d})
    assert ev.n_detected_runs > 0 and ev.median_lead_time_checkpoints >= 1
    assert ev.median_lead_time_steps == 100 * ev.median_lead_time_checkpoints


def test_model_parameters_reproduce_the_sklearn_pipeline(model, data):
    rows = data[0]
    X = np.array([[r.get(f, np.nan) for f in model.features] for r in rows])
    assert_allclose(model.decision_function(rows), model.pipeline_.decision_function(X), rtol=1e-10)
    p = model.to_dict()
    assert p["calibration"]["method"] == "platt" and p["calibration"]["a"] < 0  # risk grows with the score
    assert "kl_fwd_ood_slope" in p["features"] and "step" not in p["features"]


def test_round_trip_through_json_gives_identical_predictions(model, data):
    rows = data[0][:40]
    text = json.dumps(model.to_dict())
    loaded = RiskModel.from_dict(json.loads(text))
    assert loaded.version == model.version
    assert [loaded.predict(r) for r in rows] == [model.predict(r) for r in rows]
    assert np.array_equal(loaded.predict_proba(rows), model.predict_proba(rows))


def test_from_dict_rejects_edited_or_foreign_documents(model):
    edited = model.to_dict()
    edited["coef"][0] += 1.0
    with pytest.raises(ValueError, match="fingerprint"):
        RiskModel.from_dict(edited)
    with pytest.raises(ValueError, match="format"):
        RiskModel.from_dict({"format": "pickle"})
    truncated = {k: v for k, v in model.to_dict().items() if k != "calibration"}
    with pytest.raises(ValueError, match="malformed"):
        RiskModel.from_dict(truncated)


def test_prediction_reports_used_and_missing_features(model, data):
    row = data[0][5]
    est = model.predict(row)
    assert est.applicable and 0 <= est.value <= 1 and est.reason is None
    assert est.model == "logistic" and est.model_version == model.version
    assert set(est.features_used) == set(model.features) and est.features_missing == ()
    partial = {k: v for k, v in row.items() if not k.startswith("kl_")}
    est = model.predict(partial)
    assert est.applicable
    assert "kl_fwd_ood" in est.features_missing and "kl_fwd_ood" not in est.features_used


@pytest.mark.parametrize("row, reason", [
    ({"n_checkpoints": 1, "kl_fwd_ood": 0.1}, "fewer than 2 checkpoints"),
    ({"n_checkpoints": 5, "distinct2": 0.4, "embed_mmd": 0.1}, "no probe or parameter"),
    ({"n_checkpoints": 5, "kl_fwd_ood": None, "param_rel_l2": float("nan")}, "no probe or parameter"),
])
def test_not_applicable_rows_get_a_reason_instead_of_a_number(model, row, reason):
    for est in (model.predict(row), heuristic_risk(row)):
        assert not est.applicable and est.value is None and reason in est.reason


def test_calibration_is_skipped_with_few_runs(data):
    rows, labels, groups, _, _ = data
    keep = [i for i, g in enumerate(groups) if g in {"run0", "run1", "run2", "run3"}]
    y = [labels[i] for i in keep]
    if len(set(y)) < 2:
        pytest.skip("chosen runs hold one class")
    m = RiskModel().fit([rows[i] for i in keep], y, [groups[i] for i in keep])
    assert m.to_dict()["calibration"] is None


def test_fit_rejects_a_single_class():
    with pytest.raises(ValueError, match="both 0 and 1"):
        RiskModel().fit([{"kl_fwd_ood": 0.1}] * 3, [0, 0, 0], ["a", "b", "c"])


# ----------------------------------------------------------------------------- heuristic
def test_heuristic_is_one_half_at_the_reference_levels_and_grows_with_kl():
    ref = {"kl_fwd_ood": HEURISTIC_REFS["kl_fwd_ood"], "param_rel_l2": HEURISTIC_REFS["param_rel_l2"]}
    est = heuristic_risk(ref)
    assert est.model == "heuristic" and est.applicable
    assert_allclose(est.value, 0.5)
    assert est.features_used == ("kl_fwd_ood", "param_rel_l2")
    doubled = heuristic_risk({**ref, "kl_fwd_ood": 2 * ref["kl_fwd_ood"]})
    assert_allclose(doubled.value, 1 / (1 + math.exp(-0.75)))
    alone = heuristic_risk({"param_rel_l2": 4 * HEURISTIC_REFS["param_rel_l2"]})  # weight renormalized to 1
    assert_allclose(alone.value, 1 / (1 + math.exp(-2.0)))
    assert alone.features_missing == ("kl_fwd_in", "kl_fwd_ood")


def test_heuristic_falls_back_to_new_task_kl():
    est = heuristic_risk({"kl_fwd_in": HEURISTIC_REFS["kl_fwd_in"]})
    assert est.applicable and est.features_used == ("kl_fwd_in",)
    assert_allclose(est.value, 0.5)
    est = heuristic_risk({"acc_change_in": 0.1})
    assert not est.applicable and "kl_fwd_ood" in est.reason


# ----------------------------------------------------------------------------- lead time, rollback
def test_lead_time_counts_checkpoints_from_first_alarm_to_first_drop():
    g = np.array(["a"] * 5 + ["b"] * 4 + ["c"] * 3)
    steps = [10, 20, 30, 40, 50] + [10, 20, 30, 40] + [10, 20, 30]
    risk = np.array([0.1, 0.6, 0.4, 0.9, 0.9] + [0.1, 0.2, 0.3, 0.8] + [0.9, 0.9, 0.9])
    dropped = np.array([0, 0, 0, 1, 1] + [0, 1, 1, 1] + [0, 0, 0])
    leads, lead_steps, n_forgetting = _lead_times(risk, np.zeros(12, int), g, steps, dropped, 3, 0.5)
    # a: alarm at 1, drop at 3 → 2 early; b: drop at 1, alarm at 3 → 2 late; c never forgets
    assert (leads, lead_steps, n_forgetting) == ([2, -2], [20.0, -20.0], 2)
    # Without `dropped`, onset = first positive label + horizon (capped at the run's end): exact for
    # a, whose drop at 3 is labelled from 0 on; b's first label is its first checkpoint, so its
    # drop time is unknown and the cap (3) is used.
    labels = np.array([1, 1, 1, 1, 1] + [1, 1, 1, 1] + [0, 0, 0])
    leads, _, _ = _lead_times(risk, labels, g, steps, None, 3, 0.5)
    assert leads == [2, 0]


def test_last_safe_step_is_before_the_first_risky_checkpoint():
    steps = [100, 200, 300, 400]
    assert last_safe_step(steps, [0.1, 0.2, 0.6, 0.3], 0.5) == 200
    assert last_safe_step(steps, [0.1, None, 0.5, 0.3], 0.5) == 100  # at the threshold counts as risky
    assert last_safe_step(steps, [0.7, 0.1, 0.1, 0.1], 0.5) is None
    assert last_safe_step(steps, [None, 0.1, 0.2, 0.3], 0.5) == 400
    assert last_safe_step([], [], 0.5) is None


# ----------------------------------------------------------------------------- purity
def test_importing_the_math_modules_loads_no_service_dependencies():
    banned = ["fastapi", "sqlalchemy", "procrastinate", "prometheus_client", "torch", "service"]
    code = ("import sys, drift.risk, drift.forecast, drift.findings; "
            f"print([m for m in {banned!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
