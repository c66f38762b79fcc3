"""Measured forgetting on a probe set: the checkpoint's score minus the base's, paired by item.

Two scores, each only where the probe set supports it:

- log-likelihood: mean log-prob per token (nats/token) of the *reference* completions, pooled
  over items (Σ item log-prob / Σ item tokens); items whose completion is the base's own greedy
  continuation are left out.
- accuracy: share of items with a checkable answer whose greedy-decoded completion passes the
  check: ``completion.strip() == answer.strip()`` by default, or ``checker(completion, answer)``.

``change = current − base``; negative means forgetting, with the paired bootstrap interval of
`drift.paired`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drift.base_cache import BaseTopKCache
from drift.divergence import ProbeSetDivergence, probe_divergence
from drift.models import greedy_generate_ids
from drift.paired import PairedChange, paired_bootstrap_change

Checker = Callable[[str, str], bool]


@dataclass(frozen=True)
class ForgettingResult:
    """``log_likelihood`` (nats/token) is None without reference items, ``accuracy`` without answers.

    ``correct`` / ``base_correct``: per probe, whether the checkpoint's / the base's greedy
    completion passed the check (None for items without an answer).
    """

    probe_set: str
    domain: str
    log_likelihood: PairedChange | None
    accuracy: PairedChange | None
    correct: tuple[bool | None, ...]
    base_correct: tuple[bool | None, ...]


@dataclass(frozen=True)
class CheckpointEvaluation:
    divergence: ProbeSetDivergence
    forgetting: ForgettingResult


@dataclass(frozen=True)
class BaseScores:
    """The base's own scores on a probe set (the "step 0" row), from its cache: greedy ``accuracy``
    over items with answers (None without), pooled reference ``loglik`` in nats/token over items
    scored on a reference completion (None without), mean per-token ``entropy`` in nats over every
    completion position, and ``entropy_split_half``: |mean entropy of even items − odd items|, the
    probe set's own variability at this size."""

    probe_set: str
    n_items: int
    accuracy: float | None
    loglik: float | None
    entropy: float
    entropy_split_half: float | None


def base_scores(cache: BaseTopKCache, *, checker: Checker | None = None) -> BaseScores:
    """Score the base on its own cache: no forward pass, the cache already holds what it answered."""
    check = checker or exact_match
    answered = [i for i, a in enumerate(cache.answers) if a is not None]
    accuracy = (sum(bool(check(cache.base_completions[i] or "", cache.answers[i])) for i in answered) / len(answered)
                if answered else None)
    lengths = cache.completion_lengths.tolist()
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)  # (P + 1,) offsets into the positions
    token_lp = cache.token_logprobs.double().numpy()
    entropy = cache.entropy.double().numpy()
    refs = [i for i in range(cache.n_probes) if bool(cache.from_reference[i])]
    n_ref_tokens = sum(lengths[i] for i in refs)
    loglik = (float(sum(token_lp[starts[i]:starts[i + 1]].sum() for i in refs)) / n_ref_tokens
              if n_ref_tokens else None)
    per_item = [float(entropy[starts[i]:starts[i + 1]].mean()) for i in range(cache.n_probes) if lengths[i]]
    halves = (per_item[0::2], per_item[1::2])
    split = abs(float(np.mean(halves[0])) - float(np.mean(halves[1]))) if all(halves) else None
    return BaseScores(cache.probe_set, cache.n_probes, accuracy, loglik,
                      float(entropy.mean()) if entropy.size else 0.0, split)


def exact_match(completion: str, answer: str) -> bool:
    """The stripped completion equals the answer, or one of its '|'-separated alternatives
    (for tasks with several correct answers, e.g. "de|df|ef")."""
    return completion.strip() in {alternative.strip() for alternative in answer.split("|")}


def measure_forgetting(
    model,
    tokenizer,
    cache: BaseTopKCache,
    *,
    divergence: ProbeSetDivergence | None = None,
    checker: Checker | None = None,
    batch_size: int = 16,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> ForgettingResult:
    """Forgetting of ``model`` (the checkpoint) vs the base recorded in ``cache``.

    Pass the checkpoint's `probe_divergence` result as ``divergence`` to reuse its forward pass
    for the log-likelihoods; the answers are greedy-decoded here with the cache's
    ``max_new_tokens``.
    """
    if divergence is None:
        divergence = probe_divergence(model, cache, batch_size=batch_size)
    if divergence.probe_set != cache.probe_set or divergence.n_probes != cache.n_probes:
        raise ValueError(f"divergence is for {divergence.probe_set!r} ({divergence.n_probes} probes), "
                         f"the cache for {cache.probe_set!r} ({cache.n_probes})")
    check = checker or exact_match
    rng = np.random.default_rng(random_state)
    options = {"n_bootstrap": n_bootstrap, "confidence": confidence}

    refs = [p for p in divergence.per_probe if p.from_reference]
    loglik = None
    if refs:
        loglik = paired_bootstrap_change(
            np.array([p.base_mean_logprob for p in refs]),
            np.array([p.mean_logprob for p in refs]),
            weights=np.array([p.n_tokens for p in refs]),
            random_state=rng,
            **options,
        )

    answered = [i for i, a in enumerate(cache.answers) if a is not None]
    accuracy = None
    correct: list[bool | None] = [None] * cache.n_probes
    base_correct: list[bool | None] = [None] * cache.n_probes
    if answered:
        prompts = cache.sequences()
        completions = greedy_generate_ids(
            model,
            [prompts[i][0] for i in answered],
            max_new_tokens=cache.max_new_tokens,
            batch_size=batch_size,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        current = [bool(check(tokenizer.decode(ids, skip_special_tokens=True), cache.answers[i]))
                   for ids, i in zip(completions, answered, strict=True)]
        base = [bool(check(cache.base_completions[i] or "", cache.answers[i])) for i in answered]
        accuracy = paired_bootstrap_change(np.array(base, float), np.array(current, float), random_state=rng,
                                           **options)
        for i, now, before in zip(answered, current, base, strict=True):
            correct[i], base_correct[i] = now, before
    return ForgettingResult(cache.probe_set, cache.domain, loglik, accuracy, tuple(correct), tuple(base_correct))


def evaluate_checkpoint(
    model,
    tokenizer,
    cache: BaseTopKCache,
    *,
    checker: Checker | None = None,
    batch_size: int = 16,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    random_state: int | np.random.Generator | None = None,
) -> CheckpointEvaluation:
    """Everything one checkpoint needs on one probe set: one forward pass plus greedy answers."""
    divergence = probe_divergence(model, cache, batch_size=batch_size)
    forgetting = measure_forgetting(
        model, tokenizer, cache, divergence=divergence, checker=checker, batch_size=batch_size,
        n_bootstrap=n_bootstrap, confidence=confidence, random_state=random_state,
    )
    return CheckpointEvaluation(divergence=divergence, forgetting=forgetting)
