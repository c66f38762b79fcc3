import dataclasses

import numpy as np
import pytest
from numpy.testing import assert_allclose

from drift.diversity import (
    collapse_signals,
    distinct_n,
    is_dominated,
    mean_pairwise_similarity,
    repeated_ngram_rate,
)

HEALTHY = [
    "Photosynthesis turns light into chemical energy in plants.",
    "Compound interest grows savings because interest earns interest.",
    "Binary search halves the remaining range at every step.",
    "Volcanoes form where magma reaches the surface of the crust.",
]
COLLAPSED = [
    "**Note:** **Note:** **Note:** **Note:** **Note:**",
    "the the the the the answer",
    "!!!!!!!!!!!!!!!!!!!!",
    "**Note:** **Note:** **Note:** **Note:** **Note:**",
]


def test_distinct_n_and_repetition_against_hand_counts():
    tokens = [["a", "b", "a", "b"], ["a", "c"]]
    # unigrams: a b a b a c -> 3 unique of 6; bigrams: ab ba ab ac -> 3 unique of 4
    assert distinct_n(tokens, 1) == 0.5 and distinct_n(tokens, 2) == 0.75
    # bigram "a b" repeats once within the first response; 3 + 1 bigrams in all
    assert repeated_ngram_rate(tokens, 2) == 0.25
    assert distinct_n([[]], 2) == 0.0 and repeated_ngram_rate([["x"]], 3) == 0.0


def test_dominance_catches_tokens_strings_and_character_loops():
    def dominated(text):
        return is_dominated(text, text.split())

    assert dominated("the the the the answer")  # one token
    assert dominated("one two three one two three one two three")  # one phrase: 4 of 7 trigrams repeat
    assert is_dominated("!!!!!!!!!!!!", ["!!!!!!!!!!!!"])
    assert is_dominated("abcabcabcabcabc", ["abcabcabcabcabc"])
    assert not is_dominated(HEALTHY[0], HEALTHY[0].split())
    assert not is_dominated("", [])


def test_collapsed_batch_scores_worse_on_every_signal():
    healthy, collapsed = collapse_signals(HEALTHY), collapse_signals(COLLAPSED)
    assert collapsed.distinct_1 < healthy.distinct_1 and collapsed.distinct_2 < healthy.distinct_2
    assert collapsed.repeated_ngram_rate > healthy.repeated_ngram_rate == 0.0
    assert collapsed.dominated_share == 1.0 and healthy.dominated_share == 0.0
    assert collapsed.mode_response_share == 0.5 and healthy.mode_response_share == 0.25
    assert healthy.mean_pairwise_similarity is None and healthy.mean_token_entropy is None
    assert dataclasses.asdict(healthy)["n_responses"] == 4


def test_lengths_similarity_and_entropy():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    entropies = [[1.0, 2.0], [3.0], [0.0, 0.0, 0.0]]
    logprobs = [[-1.0], [-3.0], [-2.0]]
    signals = collapse_signals(["a b", "c", "d e f"], embeddings=emb, token_entropies=entropies,
                               token_logprobs=logprobs)
    assert signals.length_mean == 2.0
    assert_allclose(signals.length_std, np.std([2, 1, 3]))
    cos = 1 / np.sqrt(2)
    assert_allclose(signals.mean_pairwise_similarity, (0 + cos + cos) / 3)
    assert signals.mean_token_entropy == pytest.approx(6 / 6)  # exact entropies win over log-probs
    assert collapse_signals(["a", "b", "c"], token_logprobs=logprobs).mean_token_entropy == pytest.approx(2.0)
    assert_allclose(mean_pairwise_similarity(np.array([[1.0, 0.0], [0.0, 0.0]])), 0.0)


def test_invalid_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="non-empty"):
        collapse_signals([])
    with pytest.raises(ValueError, match="not str"):
        collapse_signals(["ok", 3])
    with pytest.raises(ValueError, match="embeddings must have shape"):
        collapse_signals(["a", "b"], embeddings=np.ones((3, 2)))
    with pytest.raises(ValueError, match="expected 2"):
        collapse_signals(["a", "b"], token_entropies=[[1.0]])
    with pytest.raises(ValueError, match="NaN"):
        collapse_signals(["a"], token_logprobs=[[np.nan]])
    with pytest.raises(ValueError, match="rows >= 2"):
        mean_pairwise_similarity(np.ones((1, 2)))
