import itertools

import numpy as np
import pytest
from numpy.testing import assert_allclose

from drift.sequential import WEIGHTS, sequential_shift_test


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def run_batches(seed, *, n_batches=10, n=16, dim=8, share=0.0):
    """A run of paired batches from one anisotropic distribution; ``share`` of every batch's current
    rows come from a second, offset cluster instead."""
    rng = np.random.default_rng(seed)
    scale = np.r_[np.full(2, 3.0), np.ones(dim - 2)]
    batches = []
    for _ in range(n_batches):
        x = unit_rows(rng.normal(size=(n, dim)) * scale + 2)
        y = unit_rows(rng.normal(size=(n, dim)) * scale + 2)
        k = round(share * n)
        y[:k] = unit_rows(rng.normal(size=(k, dim)) * 0.5 + np.r_[np.zeros(dim - 2), 6.0, -6.0])
        batches.append((x, y[rng.permutation(n)]))
    return batches


def whiten(pooled, ridge):
    """Rows of ``pooled`` centred and whitened in the primal with (C + δI)^-1/2, δ = ridge·tr(C)/dim."""
    centred = pooled - pooled.mean(0)
    cov = centred.T @ centred / len(pooled)
    vals, vecs = np.linalg.eigh(cov + ridge * np.trace(cov) / len(cov) * np.eye(len(cov)))
    return centred @ vecs @ np.diag(vals**-0.5) @ vecs.T


def median_rbf(w):
    d2 = ((w[:, None, :] - w[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * np.median(d2[np.triu_indices(len(w), 1)])))


def reference_evalues(batches, *, etas, eta=0.2, ridge=0.3, typicality_ridge=0.3):
    """The e-process written out pair by pair in float64, whitening in the primal."""
    log_wealth, log_typical, out, xs, ys = np.zeros(len(etas)), np.zeros(2), [], [], []
    for x, y in batches:
        # typicality: log leave-one-out density over (earlier references, batch references, batch
        # currents), whitened and raw, each gap scaled to unit rms, summed
        pool = np.vstack([*xs, x, y])
        first = sum(len(b) for b in xs)
        s = np.zeros(len(x))
        for kernel in (median_rbf(whiten(pool, typicality_ridge)), median_rbf(pool)):
            density = np.log((kernel.sum(1) - 1) / (len(kernel) - 1))
            gap = np.array([density[first + i] - density[first + len(x) + i] for i in range(len(x))])
            s += gap / np.sqrt(np.mean(gap**2))
        s = s / np.sqrt(np.mean(s**2))
        s = s * np.abs(s)
        for i in range(len(x)):
            z = s[i] / np.sqrt(np.mean(s**2))
            log_typical += np.log1p(np.tanh(np.array([eta, -eta]) * z))
        # learned witness over all earlier pairs
        xs.append(x)
        ys.append(y)
        kernel = median_rbf(whiten(np.vstack([*xs, *ys]), ridge))  # references, then current responses
        m = len(kernel) // 2  # pair t: reference row t, current row m + t
        for t in range(m - len(x), m):
            terms = np.array(
                [kernel[m + t, m + s] - kernel[m + t, s] - kernel[t, m + s] + kernel[t, s] for s in range(t)]
            )
            z = terms.sum() / np.sqrt((terms**2).sum()) if t else 0.0
            log_wealth += np.log1p(np.tanh(np.asarray(etas) * z))
        out.append(
            WEIGHTS[0] * np.exp(log_typical[0]) + WEIGHTS[1] * np.exp(log_typical[1])
            + WEIGHTS[2] * float(np.mean(np.exp(log_wealth)))
        )
    return out


def test_evalues_match_a_pair_by_pair_float64_computation():
    batches = run_batches(3, n_batches=3, n=5, dim=4, share=0.4)
    result = sequential_shift_test(batches, etas=(0.3, 1.0))
    assert_allclose(result.evalues, reference_evalues(batches, etas=(0.3, 1.0)), rtol=1e-4)


def test_every_batch_is_a_fair_bet_over_the_swaps_of_its_pairs():
    # the martingale property, exactly: given the earlier batches, the 2^n equally likely orientations
    # of the last batch's pairs (the null) average the e-value back to its value before that batch
    *past, (x, y) = run_batches(5, n_batches=3, n=5, dim=4, share=0.4)
    before = sequential_shift_test(past).evalue
    after = []
    for flips in itertools.product([False, True], repeat=len(x)):
        swap = np.array(flips)[:, None]
        after.append(sequential_shift_test([*past, (np.where(swap, y, x), np.where(swap, x, y))]).evalue)
    assert before > 1.0 and np.ptp(after) > 0.1  # a non-trivial check: the bets move the e-value
    assert np.mean(after) == pytest.approx(before, rel=1e-6)


def test_run_level_false_alarm_rate_stays_below_alpha_under_exchangeable_pairs():
    alpha, runs = 0.1, 200
    results = [sequential_shift_test(run_batches(seed, n_batches=8), alpha=alpha) for seed in range(runs)]
    rate = np.mean([r.detected for r in results])
    assert rate <= alpha + 0.035  # Ville: P(ever >= 1/alpha) <= alpha; 0.035 is 1.65 binomial sd at 200 runs
    assert np.mean([r.evalue for r in results]) < 1.5  # a martingale from 1: mean 1 (heavy tailed)


def test_evidence_accumulates_across_batches_under_a_mixture_shift():
    result = sequential_shift_test(run_batches(7, share=0.25), alpha=0.05)
    assert result.detected and result.first_detection is not None and result.first_detection <= 5
    assert result.evalues[-1] > 1e3 > result.evalues[0]
    assert result.n_pairs == 160
    single_batch = sequential_shift_test(run_batches(7, share=0.25)[:1], alpha=0.05)
    assert not single_batch.detected


def test_power_against_a_mixture_shift_over_runs():
    first = [sequential_shift_test(run_batches(seed, share=0.25)).first_detection for seed in range(100, 120)]
    assert None not in first and max(first) <= 5 and np.median(first) <= 3  # measured: 2-4, median 3


def test_a_shift_is_detected_whichever_side_is_called_current():
    # swapping every pair leaves the learned witness's h(t, s) unchanged (it is learned from the
    # swapped pairs too) and trades the two typicality bets
    batches = run_batches(11, share=0.25)
    swapped = sequential_shift_test([(y, x) for x, y in batches])
    assert swapped.detected and swapped.evalue > 1e3


def test_identical_responses_and_empty_batches_leave_the_evalue_at_one():
    x = unit_rows(np.ones((6, 4)))
    result = sequential_shift_test([(x, x), (x[:0], x[:0]), (x, x)])
    assert result.evalues == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)
    assert not result.detected and result.first_detection is None
    assert sequential_shift_test([]).evalue == 1.0


@pytest.mark.parametrize(
    ("batches", "kwargs", "message"),
    [
        ([(np.zeros((3, 2)), np.zeros((4, 2)))], {}, "equal shape"),
        ([(np.zeros((3, 2)), np.zeros((3, 2))), (np.zeros((3, 5)), np.zeros((3, 5)))], {}, "embedding dim 5"),
        ([(np.full((3, 2), np.nan), np.zeros((3, 2)))], {}, "NaN"),
        ([], {"alpha": 1.0}, "alpha"),
        ([], {"etas": ()}, "etas"),
        ([], {"window": 0}, "window"),
        ([], {"typicality_eta": 1.5}, "typicality_eta"),
        ([], {"typicality_whitening": 0.0}, "whitening"),
    ],
)
def test_invalid_inputs_are_refused_with_the_reason(batches, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sequential_shift_test(batches, **kwargs)
