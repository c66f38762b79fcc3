import numpy as np
import pytest
from numpy.testing import assert_allclose

from drift.gram import gram_to_squared_distances, rbf_kernel, squared_distances, whitened_gram
from drift.shift import (
    SIMILARITY_BIN_EDGES,
    ShiftResult,
    centroid_cosine_distance,
    classifier_two_sample_test,
    embedding_shift_test,
    label_signs,
    mmd_rbf,
    prompt_similarity,
    ridge_cv_operator,
    unbiased_mmd2,
)

N_SEEDS = 300


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def same_distribution(seed, n=40, dim=16):
    """Two samples from one anisotropic distribution (a few dominant directions, like embeddings)."""
    rng = np.random.default_rng(seed)
    scale = np.r_[np.full(3, 3.0), np.ones(dim - 3)]
    return unit_rows(rng.normal(size=(n, dim)) * scale + 2), unit_rows(rng.normal(size=(n, dim)) * scale + 2)


def mixture_shift(seed, n=40, dim=16, share=0.3):
    """The current sample has ``share`` of its rows from a second, offset cluster."""
    x, y = same_distribution(seed, n, dim)
    rng = np.random.default_rng(10_000 + seed)
    k = round(share * n)
    y[:k] = unit_rows(rng.normal(size=(k, dim)) * 0.5 + np.r_[np.zeros(dim - 2), 6.0, -6.0])
    return x, y


@pytest.mark.parametrize(
    "test",
    [
        lambda x, y, s: embedding_shift_test(x, y, n_permutations=199, random_state=s).p_value,
        lambda x, y, s: mmd_rbf(x, y, n_permutations=199, random_state=s).p_value,
        lambda x, y, s: classifier_two_sample_test(x, y, n_permutations=199, random_state=s).p_value,
    ],
    ids=["decision", "mmd", "classifier"],
)
def test_false_positive_rate_is_near_nominal_on_same_distribution_samples(test):
    rejections = np.mean([test(*same_distribution(seed), seed) < 0.05 for seed in range(N_SEEDS)])
    assert 0.03 <= rejections <= 0.08


@pytest.mark.parametrize(
    "test",
    [
        lambda x, y: embedding_shift_test(x, y, n_permutations=499, random_state=0).p_value,
        lambda x, y: mmd_rbf(x, y, n_permutations=499, random_state=0).p_value,
        lambda x, y: classifier_two_sample_test(x, y, n_permutations=499, random_state=0).p_value,
    ],
    ids=["decision", "mmd", "classifier"],
)
def test_a_controlled_mixture_shift_is_detected(test):
    assert test(*mixture_shift(seed=1, n=80)) < 0.01


def test_paired_test_swaps_within_pairs_and_reports_prompt_similarity():
    rng = np.random.default_rng(0)
    prompts = unit_rows(rng.normal(size=(60, 8)))
    x = unit_rows(prompts + 0.2 * rng.normal(size=prompts.shape))
    y = unit_rows(prompts + 0.2 * rng.normal(size=prompts.shape))
    result = embedding_shift_test(x, y, paired=True, random_state=0)
    sims = prompt_similarity(x, y)
    assert result.paired and result.prompt_similarity_median == sims.median
    assert result.prompt_similarity_p25 == sims.p25 <= sims.median
    assert not result.drift_detected
    signs = label_signs(3, 3, 50, np.random.default_rng(0), paired=True)
    assert_allclose(signs[:3] + signs[3:], 0)  # each pair keeps one row on each side
    shifted = embedding_shift_test(x, unit_rows(y + np.r_[1.0, np.zeros(7)]), paired=True, random_state=0)
    assert shifted.drift_detected and shifted.prompt_similarity_median < sims.median


def test_result_is_a_plain_frozen_dataclass():
    import dataclasses

    x, y = same_distribution(0)
    result = embedding_shift_test(x, y, random_state=0)
    assert isinstance(result, ShiftResult)
    assert dataclasses.asdict(result)["n_reference"] == 40
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.p_value = 0.0
    assert result == embedding_shift_test(x, y, random_state=0)


def test_unbiased_mmd_matches_a_direct_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)) + 0.5
    h = 1.3
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    xx = np.mean([k(a, b) for i, a in enumerate(x) for j, b in enumerate(x) if i != j])
    yy = np.mean([k(a, b) for i, a in enumerate(y) for j, b in enumerate(y) if i != j])
    xy = np.mean([k(a, b) for a in x for b in y])
    kernel = rbf_kernel(squared_distances(np.vstack([x, y])), h)
    assert_allclose(unbiased_mmd2(kernel, 5), xx + yy - 2 * xy)
    assert_allclose(mmd_rbf(x, y, bandwidth=h, n_permutations=10).mmd2, xx + yy - 2 * xy)


def test_whitened_gram_matches_the_primal_computation():
    rng = np.random.default_rng(0)
    for n, dim in ((30, 5), (10, 40)):  # fewer and more dimensions than rows
        z = rng.normal(size=(n, dim)) * np.linspace(0.2, 3, dim)
        zc = z - z.mean(0)
        cov = zc.T @ zc / n
        primal = zc @ np.linalg.solve(cov + 0.3 * np.trace(cov) / dim * np.eye(dim), zc.T)
        assert_allclose(whitened_gram(z, ridge=0.3), primal, rtol=1e-3, atol=1e-3 * np.abs(primal).max())
        d2 = gram_to_squared_distances(primal)
        assert_allclose(d2[0, 1], primal[0, 0] + primal[1, 1] - 2 * primal[0, 1])


def test_ridge_cv_operator_reproduces_sklearn_ridge_classifier_scores():
    from sklearn.linear_model import RidgeClassifier

    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 6))
    labels = np.r_[np.zeros(15), np.ones(15)]
    folds = np.arange(30) % 3
    predictions = ridge_cv_operator(z, folds, alpha=2.0) @ labels
    for f in range(3):
        clf = RidgeClassifier(alpha=2.0).fit(z[folds != f], labels[folds != f])
        # RidgeClassifier regresses on ±1 targets: its decision is an affine map of ours
        assert_allclose(clf.decision_function(z[folds == f]), 2 * predictions[folds == f] - 1, atol=1e-10)


def test_classifier_auc_matches_sklearn_roc_auc():
    from sklearn.metrics import roc_auc_score

    from drift.shift import _auc_columns

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 3)).round(1)  # ties included
    labels = np.tile(np.r_[np.zeros(10), np.ones(10)][:, None], (1, 3))
    labels[:, 1] = rng.permutation(labels[:, 1])
    expected = [roc_auc_score(labels[:, j], scores[:, j]) for j in range(3)]
    assert_allclose(_auc_columns(scores, labels), expected)


def test_degenerate_and_invalid_inputs():
    same = np.ones((5, 4))
    result = embedding_shift_test(same, same.copy())
    assert result.p_value == 1.0 and not result.drift_detected and result.centroid_cosine_distance == 0.0
    assert mmd_rbf(same, same).p_value == 1.0
    assert centroid_cosine_distance(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0
    assert centroid_cosine_distance(np.zeros((2, 3)), np.ones((2, 3))) == 1.0
    assert_allclose(centroid_cosine_distance(np.eye(2)[:1], np.eye(2)[1:]), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        embedding_shift_test(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="dims differ"):
        embedding_shift_test(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        embedding_shift_test(np.full((4, 2), np.nan), np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least 3 rows"):
        embedding_shift_test(np.ones((2, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="paired samples need equal sizes"):
        embedding_shift_test(np.ones((4, 2)), np.ones((5, 2)), paired=True)
    with pytest.raises(ValueError, match="alpha"):
        embedding_shift_test(np.ones((4, 2)), np.ones((4, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="n_permutations"):
        mmd_rbf(np.ones((4, 2)), np.ones((4, 2)), n_permutations=0)


def test_prompt_similarity_describes_the_lower_tail_with_fixed_bins():
    angles = np.array([0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.2, 1.5])  # cosines 1 ... 0.07
    x = np.tile([1.0, 0.0], (10, 1))
    y = np.column_stack([np.cos(angles), np.sin(angles)])
    sims = prompt_similarity(x, y, low_threshold=0.9)
    cosines = np.cos(angles)
    assert_allclose([sims.median, sims.p25, sims.p10], np.percentile(cosines, [50, 25, 10]))
    assert sims.low_share == np.mean(cosines < 0.9) == 0.5
    assert sims.histogram == tuple(np.histogram(cosines, bins=SIMILARITY_BIN_EDGES)[0])
    assert sum(sims.histogram) == 10 and sims.histogram[0] == 2  # cos 1.2 and 1.5 rad < 0.5
    assert prompt_similarity(x, x).histogram[-1] == 10  # identical responses: all in the top bin
