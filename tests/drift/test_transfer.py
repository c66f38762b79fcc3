import numpy as np
import pytest
from numpy.testing import assert_allclose

from drift.paired import paired_bootstrap_change
from drift.transfer import relative_drop, transfer_matrix

NAN = np.nan


def _ones(n: int) -> np.ndarray:
    return np.ones(n)


def test_matrix_bwt_and_fwt_match_a_hand_computed_example() -> None:
    # Three stages; stage 3 has not started (its row is NaN). Probe sets: a (stage 1), b (stage 2),
    # c (stage 3), o (ood, retention only). Rows: base, end of stage 1, end of stage 2, end of stage 3.
    a = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [NAN] * 4])  # 0, 1, 0.5
    b = np.array([[0, 1], [1, 1], [1, 1], [NAN, NAN]])  # 0.5, 1, 1
    c = np.array([[0, 0, 0], [0, 0, 1], [1, 1, 0], [NAN] * 3])  # 0, 1/3, 2/3
    o = np.array([[1, 1], [1, 0], [0, 0], [NAN, NAN]])  # 1, 0.5, 0
    result = transfer_matrix(
        [a, b, c, o], [_ones(4), _ones(2), _ones(3), _ones(2)], [1, 2, 3, 0], n_bootstrap=200, random_state=0
    )
    assert result.final_row == 2
    assert_allclose(
        np.array(result.matrix[:3], dtype=float), [[0, 0.5, 0, 1], [1, 1, 1 / 3, 0.5], [0.5, 1, 2 / 3, 0]]
    )
    assert result.matrix[3] == (None, None, None, None)
    # BWT over stages k < 2: R[2,a] - R[1,a] = 0.5 - 1
    assert result.bwt is not None and result.bwt.n_stages == 1
    assert result.bwt.value == pytest.approx(-0.5)
    # FWT over stages 2..3: (R[1,b] - R[0,b] + R[2,c] - R[0,c]) / 2 = (0.5 + 2/3) / 2
    assert result.fwt is not None and result.fwt.n_stages == 2
    assert result.fwt.value == pytest.approx((0.5 + 2 / 3) / 2)
    for found in (result.bwt, result.fwt):
        assert found.ci_low <= found.value <= found.ci_high and found.ci_high > found.ci_low


def test_weights_pool_item_scores_per_token() -> None:
    # Log-likelihood: item means weighted by their token counts (1 and 3 tokens).
    loglik = np.array([[-1.0, -2.0], [-1.0, -1.0], [-3.0, -1.0]])
    result = transfer_matrix([loglik], [np.array([1.0, 3.0])], [1], n_bootstrap=50, random_state=0)
    assert_allclose([row[0] for row in result.matrix], [-7 / 4, -1.0, -6 / 4])
    assert result.bwt is not None and result.bwt.value == pytest.approx(-6 / 4 - (-1.0))
    assert result.fwt is None  # one stage with columns: nothing to transfer forward to


def test_bwt_interval_of_one_probe_set_is_the_paired_bootstrap_of_its_two_rows() -> None:
    rng = np.random.default_rng(3)
    end1 = (rng.random(40) < 0.8).astype(float)
    end2 = (rng.random(40) < 0.5).astype(float)
    scores = np.stack([np.zeros(40), end1, end2])
    result = transfer_matrix([scores], [_ones(40)], [1], n_bootstrap=500, random_state=7)
    reference = paired_bootstrap_change(end1, end2, n_bootstrap=500, random_state=7)
    assert result.bwt is not None
    assert_allclose(
        [result.bwt.value, result.bwt.ci_low, result.bwt.ci_high],
        [reference.change, reference.ci_low, reference.ci_high],
    )


def test_a_probe_set_of_one_item_has_a_zero_width_interval() -> None:
    result = transfer_matrix(
        [np.array([[0.0], [1.0], [0.0]])], [_ones(1)], [1], n_bootstrap=20, random_state=0
    )
    assert result.bwt is not None and result.bwt.ci_low == result.bwt.ci_high == -1.0


def test_nothing_measured_after_the_base_gives_no_transfer() -> None:
    result = transfer_matrix([np.array([[0.5, 1.0], [NAN, NAN]])], [_ones(2)], [1], n_bootstrap=10)
    assert result.final_row == 0 and result.bwt is None and result.fwt is None
    assert result.matrix == ((0.75,), (None,))


@pytest.mark.parametrize(
    "bad",
    [
        {"scores": [np.zeros((2, 0))], "weights": [_ones(0)], "stage_of": [1]},
        {"scores": [np.zeros((2, 2))], "weights": [_ones(3)], "stage_of": [1]},
        {"scores": [np.zeros((2, 2))], "weights": [np.array([1.0, 0.0])], "stage_of": [1]},
        {"scores": [np.array([[0.0, NAN], [1, 1]])], "weights": [_ones(2)], "stage_of": [1]},
        {"scores": [np.zeros((2, 2))], "weights": [_ones(2)], "stage_of": [2]},
        {"scores": [], "weights": [], "stage_of": []},
    ],
)
def test_invalid_inputs_are_refused_with_the_reason(bad) -> None:
    with pytest.raises(ValueError):
        transfer_matrix(bad["scores"], bad["weights"], bad["stage_of"])


def test_relative_drop() -> None:
    assert relative_drop(0.8, 0.6) == pytest.approx(0.25)
    assert relative_drop(-2.0, -3.0) == pytest.approx(0.5)  # log-likelihood: lower is worse
    assert relative_drop(0.0, 0.5) is None
