import numpy as np
import pytest

from drift.findings import findings

N = 10
STEPS = [200 * (i + 1) for i in range(N)]


def _stable(seed=0, n=N):
    """Every measurement flat with small noise: nothing to report."""
    rng = np.random.default_rng(seed)

    def noisy(level, sd):
        return float(level + rng.normal(0, sd))

    return [{
        "param_rel_l2": noisy(0.02, 2e-4), "param_rel_l2_max_block": noisy(0.05, 5e-4), "param_nss": noisy(1e-4, 1e-6),
        "param_update_cosine": noisy(0.3, 0.02), "kl_fwd_ood": noisy(0.02, 5e-4), "kl_rev_ood": noisy(0.02, 5e-4),
        "kl_fwd_in": noisy(0.4, 0.01), "entropy_in": noisy(1.5, 0.02), "entropy_ood": noisy(2.0, 0.02),
        "loglik_change_ood": noisy(-0.01, 0.005), "acc_change_ood": noisy(-0.005, 0.005),
        "acc_change_in": noisy(0.2, 0.005), "embed_similarity_p25": noisy(0.95, 0.003),
        "distinct2": noisy(0.6, 0.01), "distinct2_base": 0.62, "repetition_ratio": noisy(0.05, 0.005),
        "sample_entropy": noisy(1.8, 0.02), "nonfinite_tensors": 0.0,
    } for _ in range(n)]


def _codes(history, **kwargs):
    return [f.code for f in findings(history, STEPS[:len(history)], **kwargs)]


def _with(history, key, values):
    return [{**h, key: v} for h, v in zip(history, values)]


@pytest.mark.parametrize("seed", range(20))
def test_flat_stable_history_gives_no_findings(seed):
    assert _codes(_stable(seed)) == []


def test_ood_kl_growth_with_rising_in_domain_accuracy_is_specialization_forgetting_divergence():
    h = _with(_stable(), "kl_fwd_ood", [0.01, 0.01, 0.011, 0.01, 0.01, 0.01, 0.015, 0.02, 0.027, 0.031])
    h = _with(h, "acc_change_in", [0.0, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15])
    (f,) = findings(h, STEPS)
    assert f.code == "specialization_forgetting_divergence" and f.severity == "warning"
    assert "ood forward KL up 3.1× in 4 checkpoints while in-domain accuracy rose" in f.message
    assert f.step == STEPS[-1]


def test_ood_kl_growth_without_in_domain_accuracy_is_reported_as_rising():
    h = _with(_stable(), "kl_fwd_ood", [0.01, 0.01, 0.011, 0.01, 0.01, 0.01, 0.015, 0.02, 0.027, 0.031])
    h = [{k: v for k, v in r.items() if k != "acc_change_in"} for r in h]
    assert _codes(h) == ["ood_kl_rising"]


def test_a_sudden_ood_kl_jump_is_a_change_point_but_a_steady_trend_is_not():
    kl = [0.02, 0.0201, 0.0199, 0.0202, 0.0198, 0.02, 0.0201, 0.05, 0.051, 0.05]
    out = findings(_with(_stable(), "kl_fwd_ood", kl), STEPS)
    jump = [f for f in out if f.code == "ood_kl_change_point"]
    assert len(jump) == 1 and jump[0].step == STEPS[7]
    assert f"sudden jump in ood KL at step {STEPS[7]} (change point)" in jump[0].message
    trend = [0.02 + 0.004 * i for i in range(N)]
    assert "ood_kl_change_point" not in _codes(_with(_stable(), "kl_fwd_ood", trend))


def test_nonfinite_tensors_are_critical_and_named():
    h = _stable()
    h[-1] = {**h[-1], "nonfinite_tensors": 7.0}
    names = [f"transformer.h.{i}.mlp.c_fc.weight" for i in range(7)]
    (f,) = findings(h, STEPS, nonfinite_names=names)
    assert (f.code, f.severity) == ("nonfinite_tensors", "critical")
    assert f.message.startswith("NaN/Inf in 7 tensors: transformer.h.0.mlp.c_fc.weight, ")
    assert f.message.endswith("(+2 more)")
    assert _codes(_stable(), nonfinite_names=["lm_head.weight"]) == ["nonfinite_tensors"]


def test_measured_ood_forgetting_relative_with_a_base_and_absolute_without():
    h = _stable()
    h[-1] = {**h[-1], "loglik_change_ood": -0.24, "loglik_base_ood": -2.0}
    (f,) = findings(h, STEPS)
    assert (f.code, f.severity, f.message) == ("ood_loglik_drop", "warning",
                                               "ood reference log-likelihood down 12% vs base")
    h[-1] = {**h[-1], "acc_change_ood": -0.12, "loglik_base_ood": None}
    out = findings(h, STEPS)
    assert [(f.code, f.severity) for f in out] == [("ood_accuracy_drop", "critical"), ("ood_loglik_drop", "warning")]
    assert out[0].message == "ood accuracy down 0.12 points vs base"


def test_diversity_entropy_repetition_and_similarity_tail():
    h = _stable()
    h[-1] = {**h[-1], "distinct2": 0.372, "sample_entropy": 0.54, "repetition_ratio": 0.3,
             "embed_similarity_p25": 0.88}
    out = {f.code: f for f in findings(h, STEPS)}
    assert set(out) == {"diversity_drop", "entropy_collapse", "repetition_rise", "response_similarity_tail_drop"}
    assert out["diversity_drop"].message == "response diversity down 40% vs base"
    assert out["entropy_collapse"].message.startswith("entropy collapse: sample entropy down 70% since first")
    assert out["repetition_rise"].severity == "warning"


def test_accelerating_parameter_drift():
    l2 = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.1, 0.13, 0.16]
    (f,) = findings(_with(_stable(), "param_rel_l2", l2), STEPS)
    assert f.code == "param_drift_accelerating"
    assert "slope 3.0× the earlier slope" in f.message
    steady = [0.01 * (i + 1) for i in range(N)]
    assert _codes(_with(_stable(), "param_rel_l2", steady)) == []


def test_current_index_ignores_later_checkpoints_and_findings_are_sorted_by_severity():
    h = _stable()
    h[-1] = {**h[-1], "acc_change_ood": -0.2, "distinct2": 0.4}
    assert _codes(h, current_index=-2) == []
    assert _codes(h) == ["ood_accuracy_drop", "diversity_drop"]
    assert findings([], []) == []
    with pytest.raises(ValueError, match="out of range"):
        findings(h, STEPS, current_index=N)


def _collapsing(divergence):
    """Diversity down 50% and repetition up 0.05 → 0.45 over the last checkpoints, with `divergence`."""
    h = _stable(3)
    h = _with(h, "distinct2", [0.6] * 6 + [0.5, 0.4, 0.35, 0.3])
    h = _with(h, "repetition_ratio", [0.05] * 6 + [0.1, 0.2, 0.3, 0.45])
    return _with(h, "teacher_divergence", divergence)


def test_self_distillation_collapse_needs_the_divergence_near_zero_with_diversity_and_repetition_signals():
    falling = [0.4, 0.5, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02]  # 0.02 / peak 0.6 = 0.033 ≤ 0.05
    (found,) = [f for f in findings(_collapsing(falling), STEPS) if f.code == "self_distillation_collapse"]
    assert found.severity == "critical" and found.step == STEPS[-1]
    assert found.value == pytest.approx(0.02 / 0.6)
    assert "0.6 → 0.02" in found.message
    # 0.04 / 0.6 = 0.067 > 0.05 of the peak: not collapsed yet
    assert "self_distillation_collapse" not in _codes(_collapsing(falling[:-1] + [0.04]))
    # the divergence near zero but diversity and repetition stable: a teacher the student matched, no loop
    assert "self_distillation_collapse" not in _codes(_with(_stable(3), "teacher_divergence", falling))
    # no divergence reported (not self-distillation): nothing, whatever the samples do
    assert "self_distillation_collapse" not in _codes(_collapsing([None] * N))
