"""The limits of a probe-only forecast on labelled runs (`drift.forecast_limits`)."""

import pytest
from sklearn.metrics import roc_auc_score

from drift.evaluation import RunTrace, risk_set, scored_in_risk_set
from drift.forecast_limits import UNMOVED, forecast_limits, moved_by


def trace(name, drop, *, onset=None, detected=None, forecast=None, kl=0.01, family="f"):
    n = len(drop)
    return RunTrace(name, family, "m", tuple(forecast or [0.1] * n), tuple(detected or [False] * n), tuple(drop),
                    tuple(kl for _ in range(n)), onset)


def test_a_run_that_jumps_from_nothing_cannot_be_warned_two_checkpoints_ahead_by_its_probes():
    jumps = trace("jumps", [0, 0, 0, 0, 0.004, 0.3, 0.5], onset=5, kl=0.02)  # one item of noise, then past 10 %
    creeps = trace("creeps", [0, 0.01, 0.03, 0.05, 0.12, 0.2], onset=4)
    early = trace("early", [0.2, 0.4, 0.5], onset=0)  # before any lead is possible: not counted
    quiet = [trace("quiet", [0, 0, 0.004, 0, 0, 0], kl=kl) for kl in (0.01, 0.015, 0.03, 0.05)]
    elsewhere = trace("elsewhere", [0] * 6, kl=0.001, family="other")  # another family: not compared
    assert not moved_by(jumps, 3) and moved_by(jumps, 5) and moved_by(creeps, 1)
    limits = forecast_limits([jumps, creeps, early, *quiet, elsewhere], threshold=0.1)
    assert (limits.late_onset, limits.unmoved_before_lead) == (2, 1)
    assert limits.early_bound == pytest.approx(0.5)
    assert limits.unmoved_kl_rank == (0.5,)  # its KL share tops two of its family's four quiet runs' peaks
    assert "1 of 2" in limits.lines()[0]


def test_the_auc_bound_is_the_auc_of_a_score_that_ties_unmoved_rows_and_ranks_the_rest_perfectly():
    runs = [
        trace("jumps", [0, 0, 0, 0, 0, 0.3], onset=5),
        trace("creeps", [0, 0.01, 0.03, 0.06, 0.08, 0.12, 0.2], onset=5),
        trace("quiet", [0, 0, 0, 0.01, 0, 0, 0, 0]),
        trace("still", [0, 0, 0, 0, 0, 0, 0]),
        trace("unscored", [0, 0, 0.02, 0.05, 0.2], onset=4, forecast=[None, None, 0.1, 0.1, 0.1]),
    ]
    limits = forecast_limits(runs, threshold=0.1, horizon=3)
    rows = [(t, i, y) for t, i, y in risk_set(runs, 3) if scored_in_risk_set(t, i)]
    assert (limits.positive_rows, limits.negative_rows) == (sum(y for *_, y in rows), sum(1 - y for *_, y in rows))
    oracle = [0.5 if not moved_by(t, i) else float(y) for t, i, y in rows]
    assert limits.probe_auc_bound == pytest.approx(roc_auc_score([y for *_, y in rows], oracle))
    assert limits.probe_auc_bound < 1.0


def test_runs_whose_labels_crossed_while_their_probes_read_less_are_named():
    behind = trace("behind", [0, 0.02, 0.04, 0.06, 0.06], onset=3)
    caught = trace("caught", [0, 0.02, 0.04, 0.06, 0.06], onset=3, detected=[False, False, False, True, True])
    through = trace("through", [0, 0.02, 0.04, 0.15, 0.2], onset=3)  # undetected, but its probes read past 10 %
    last = trace("last", [0, 0.01, 0.02, 0.07], onset=3)  # onset at its last checkpoint: read there
    limits = forecast_limits([behind, caught, through, last], threshold=0.1)
    assert [(b.run, b.drop) for b in limits.probes_behind] == [("behind", 0.06), ("last", 0.07)]
    assert limits.forgetting == 4 and "2 of 4" in limits.lines()[2]
    assert UNMOVED < 0.01
