import math
import subprocess
import sys

import pytest
from numpy.testing import assert_allclose

from drift.risk import HEURISTIC_REFS, forgetting_onset, heuristic_risk


# ----------------------------------------------------------------------------- ground-truth onset
def test_onset_is_the_first_checkpoint_ten_percent_below_the_base():
    acc = [0.60, 0.58, None, 0.55, 0.53, 0.59, 0.50]  # base 0.6: a drop is ≤ 0.54
    assert forgetting_onset(acc, base=0.6) == 4
    assert forgetting_onset(acc[:4], base=0.6) is None
    assert forgetting_onset([0.45], base=0.5) == 0  # 0.5 − 0.45 is 0.0499999…: an exact 10 % drop counts
    loglik = [-2.05, -2.15, -2.25]  # base −2.0: a drop is ≤ −2.2
    assert forgetting_onset(loglik, base=-2.0) == 2


def test_onset_rejects_a_zero_base_and_a_silly_threshold():
    with pytest.raises(ValueError, match="nonzero"):
        forgetting_onset([0.1], base=0.0)
    with pytest.raises(ValueError, match="relative_drop"):
        forgetting_onset([0.1], base=0.5, relative_drop=1.5)


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


# ----------------------------------------------------------------------------- purity
def test_importing_the_math_modules_loads_no_service_dependencies():
    banned = ["fastapi", "sqlalchemy", "procrastinate", "prometheus_client", "torch", "service"]
    code = ("import sys, drift.risk, drift.forecast, drift.findings, drift.alarms, drift.features; "
            f"print([m for m in {banned!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
