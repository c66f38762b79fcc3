"""Collapse signals from a batch of sampled responses (one per prompt, or several).

Degenerate outputs show up as falling distinct-n, rising within-response repetition, responses
dominated by one token or string, one response repeated across prompts, length anomalies,
responses becoming alike in embedding space and the model's entropy on its own samples falling
(REFERENCES: entropy collapse, and the seed paper's loop on a formatting token).

Definitions (tokens come from ``tokenize``, whitespace splitting by default):
- distinct-n (Li et al. 2016): unique n-grams over all responses / total n-grams; 0 when there
  are no n-grams at all.
- repeated-n-gram rate: n-grams that already occurred earlier in the same response / all n-grams
  (n = ``ngram``, default 3), pooled over responses; 0 when there are no n-grams.
- dominated share: share of responses where the most frequent token makes up at least
  ``dominance`` of the tokens, or at least ``dominance`` of the n-grams are repeats, or at least
  ``dominance`` of the characters sit in runs of one unit (up to 16 characters) repeated 4+
  times (catches "!!!!!!!!" and "abcabcabc" without spaces); responses of fewer than 4 tokens
  count only through the character rule.
- mode-response share: share of responses equal (after stripping) to the most common one.
- mean pairwise similarity: mean cosine similarity over distinct pairs of response embeddings.
- mean token entropy: mean over sampled tokens of the model's next-token entropy (nats), or,
  from log-probs alone, −mean log-prob of the sampled tokens (its Monte-Carlo estimate).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_REPEATED_UNIT = re.compile(r"(.{1,16}?)\1{3,}", re.DOTALL)


@dataclass(frozen=True)
class CollapseSignals:
    n_responses: int
    distinct_1: float
    distinct_2: float
    repeated_ngram_rate: float
    length_mean: float
    length_std: float
    dominated_share: float
    mode_response_share: float
    mean_pairwise_similarity: float | None
    mean_token_entropy: float | None


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams across all responses over total n-grams (0.0 with no n-grams)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for tokens in token_lists for g in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _repeats(tokens: Sequence[str], n: int) -> tuple[int, int]:
    grams = _ngrams(tokens, n)
    return len(grams) - len(set(grams)), len(grams)


def repeated_ngram_rate(token_lists: Sequence[Sequence[str]], n: int = 3) -> float:
    """Within-response repeated n-grams over all n-grams, pooled (0.0 with no n-grams)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    counts = [_repeats(tokens, n) for tokens in token_lists]
    total = sum(t for _, t in counts)
    return sum(r for r, _ in counts) / total if total else 0.0


def is_dominated(text: str, tokens: Sequence[str], *, ngram: int = 3, dominance: float = 0.5) -> bool:
    """One token, one repeated n-gram or one repeated character unit covers >= ``dominance``."""
    if len(tokens) >= 4:
        if Counter(tokens).most_common(1)[0][1] >= dominance * len(tokens):
            return True
        repeated, total = _repeats(tokens, ngram)
        if total and repeated >= dominance * total:
            return True
    stripped = text.strip()
    if not stripped:
        return False
    covered = sum(m.end() - m.start() for m in _REPEATED_UNIT.finditer(stripped))
    return covered >= dominance * len(stripped)


def mean_pairwise_similarity(embeddings: ArrayLike) -> float:
    """Mean cosine similarity over the distinct pairs of rows (zero rows count as 0)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"need a (rows >= 2, dim) array, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError("embeddings contain NaN or inf")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    total = unit.sum(0)
    n = e.shape[0]
    return float((total @ total - (unit * unit).sum()) / (n * (n - 1)))


def _mean_token_entropy(token_entropies: Sequence[Sequence[float]] | None,
                        token_logprobs: Sequence[Sequence[float]] | None, n: int) -> float | None:
    source, sign = (token_entropies, 1.0) if token_entropies is not None else (token_logprobs, -1.0)
    if source is None:
        return None
    if len(source) != n:
        raise ValueError(f"got per-token values for {len(source)} responses, expected {n}")
    values = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in source]) if n else np.array([])
    if values.size == 0:
        return None
    if not np.isfinite(values).all():
        raise ValueError("per-token entropies/log-probs contain NaN or inf")
    return float(sign * values.mean())


def collapse_signals(
    responses: Sequence[str],
    *,
    embeddings: ArrayLike | None = None,
    token_entropies: Sequence[Sequence[float]] | None = None,
    token_logprobs: Sequence[Sequence[float]] | None = None,
    tokenize: Callable[[str], Sequence[str]] | None = None,
    ngram: int = 3,
    dominance: float = 0.5,
) -> CollapseSignals:
    """All collapse signals for one batch of responses (module docstring for definitions).

    ``embeddings``: (len(responses), dim) or None; ``token_entropies``/``token_logprobs``: per
    response, one value per sampled token (e.g. `drift.models.sample_responses`), or None.
    """
    if isinstance(responses, str) or not len(responses):
        raise ValueError("responses must be a non-empty sequence of strings")
    bad = [i for i, r in enumerate(responses) if not isinstance(r, str)]
    if bad:
        raise ValueError(f"responses[{bad[0]}] is {type(responses[bad[0]]).__name__}, not str")
    if ngram < 1 or not 0 < dominance <= 1:
        raise ValueError(f"need ngram >= 1 and 0 < dominance <= 1, got {ngram}, {dominance}")
    split = tokenize or str.split
    token_lists = [list(split(r)) for r in responses]
    lengths = np.array([len(t) for t in token_lists], dtype=np.float64)
    n = len(responses)
    similarity = None
    if embeddings is not None:
        e = np.asarray(embeddings)
        if e.ndim != 2 or e.shape[0] != n:
            raise ValueError(f"embeddings must have shape ({n}, dim), got {e.shape}")
        similarity = mean_pairwise_similarity(e) if n >= 2 else None
    mode_count = Counter(r.strip() for r in responses).most_common(1)[0][1]
    return CollapseSignals(
        n_responses=n,
        distinct_1=distinct_n(token_lists, 1),
        distinct_2=distinct_n(token_lists, 2),
        repeated_ngram_rate=repeated_ngram_rate(token_lists, ngram),
        length_mean=float(lengths.mean()),
        length_std=float(lengths.std()),
        dominated_share=float(np.mean([is_dominated(r, t, ngram=ngram, dominance=dominance)
                                       for r, t in zip(responses, token_lists, strict=True)])),
        mode_response_share=mode_count / n,
        mean_pairwise_similarity=similarity,
        mean_token_entropy=_mean_token_entropy(token_entropies, token_logprobs, n),
    )
