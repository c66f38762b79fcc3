"""Token-level divergence between a base model π₀ and a checkpoint π_t on a probe set.

Each probe is teacher-forced as ``prompt + completion``, where the completion is the item's
reference or, for items without one, the base model's own greedy continuation (generated once
when the base cache is built). Statistics are taken at every position that predicts a
completion token, averaged per probe, then summarised per probe set (mean and the p10, p25,
p50, p90 of the per-probe values).

The base side is computed once per (base, probe set) and cached (`drift.base_cache`): per
completion position, the base's k largest log-probs ``a_i = log p0_i`` (i ∈ I, |I| = k, default
64), the log of the remaining tail mass ``T0 = 1 − Σ_I p0_i``, and m tokens ``j_1..j_m`` (default
16) drawn with replacement from the base's renormalised tail ``q0 = p0(·|not I)`` with their
log-probs. A checkpoint then costs one forward pass: from its full log-softmax we read
``b_i = log p_i`` on I, ``log p_j`` at the sampled tail tokens, and its tail mass
``T = 1 − Σ_I p_i`` (q = p(·|not I) its renormalised tail).

Each divergence splits exactly into a top-k part, a bucket part and a tail part, e.g.

    KL(π₀‖π_t) = Σ_I p0_i (a_i − b_i) + T0 log(T0/T) + T0 · KL(q0‖q)

The first two terms are the KL between the coarse-grained distributions on k + 1 outcomes (the
top-k plus one "other" bucket); treating the base's tail mass as spread in proportion to the
checkpoint's tail gives the same numbers as lumping it, the two choices coincide. By the
data-processing inequality they are a *lower bound*; the gap is the tail term. With m = 0 tail
samples that lower bound is what is reported. With m > 0 (the default) the tail term is
estimated from the samples, with ratio ``r_s = q(j_s)/q0(j_s)`` and zero-mean control variates
(E_q0[r] = 1) that keep every sample's contribution >= 0 (Schulman's "k3" KL estimator):

    forward KL: + T0 · mean_s[(r_s − 1) − log r_s]      (unbiased for T0·KL(q0‖q))
    reverse KL: + T  · mean_s[r_s log r_s − (r_s − 1)]  (unbiased for T·KL(q‖q0))
    total var.: ½ Σ_I |p0_i − p_i| + ½ mean_s |T0 − T r_s|   (unbiased for the tail's ½ Σ |p0 − p|)

so the reported values are unbiased over the cache's tail draw, never below the lower bound for
the two KLs, but no longer bounds themselves. Everything is exact when k >= vocabulary size.
Measured (``python -m bench.probe_kl``: vocab 16384, mean base tail mass 0.1 at k = 64, a
checkpoint three fine-tuning steps away, forward KL ~1e-3 nats/token): max per-probe error
1.6e-4 nats with 16 tail samples against 7.2e-4 for the lower bound; per token both stay near
4e-3 at the few positions with a large tail. Spending the same storage on k = 80 instead does
not move the lower bound (the gap sits in the long flat tail, not just past rank 64).

Not approximated: entropy H(π_t) = −Σ_v p_v log p_v over the full vocabulary of the checkpoint,
top-1 agreement = [argmax π_t == argmax π₀] (the base's argmax is the first top-k entry), and the
checkpoint's log-prob of the completion token (used for measured forgetting).

Precision: logits are cast to float32 before the softmax; the k-sized sums are done in float64.
Where ``1 − Σ_I p_i < 1e-4`` (cancellation) T is recomputed as a log-sum-exp over the tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from drift.models import completion_logprob_batches, token_entropy

if TYPE_CHECKING:
    from drift.base_cache import BaseTopKCache

STATISTICS = ("forward_kl", "reverse_kl", "total_variation", "entropy", "top1_agreement")


# --------------------------------------------------------------------------- per-token math
class TokenDivergences(NamedTuple):
    """Per-position statistics, each a float64 tensor of shape (positions,)."""

    forward_kl: torch.Tensor
    reverse_kl: torch.Tensor
    total_variation: torch.Tensor
    entropy: torch.Tensor
    top1_agreement: torch.Tensor


def exact_token_divergences(base_logprobs: torch.Tensor, logprobs: torch.Tensor) -> TokenDivergences:
    """Full-vocabulary reference: both inputs are log-softmaxed, shape (positions, vocab)."""
    if base_logprobs.shape != logprobs.shape or logprobs.dim() != 2:
        raise ValueError(f"need two (positions, vocab) tensors, got {tuple(base_logprobs.shape)} "
                         f"and {tuple(logprobs.shape)}")
    a, b = base_logprobs.double(), logprobs.double()
    p0, p = a.exp(), b.exp()
    diff = a - b
    fwd = torch.where(p0 > 0, p0 * diff, torch.zeros_like(p0)).sum(-1)
    rev = torch.where(p > 0, -p * diff, torch.zeros_like(p)).sum(-1)
    tv = 0.5 * (p0 - p).abs().sum(-1)
    agree = (a.argmax(-1) == b.argmax(-1)).double()
    return TokenDivergences(fwd.clamp_min(0), rev.clamp_min(0), tv, token_entropy(logprobs.float()), agree)


def topk_token_divergences(
    logprobs: torch.Tensor,
    *,
    topk_logprobs: torch.Tensor,
    topk_indices: torch.Tensor,
    tail_logmass: torch.Tensor,
    tail_indices: torch.Tensor | None = None,
    tail_logprobs: torch.Tensor | None = None,
) -> TokenDivergences:
    """Checkpoint log-probs (positions, vocab) against the base's cached top-k (module docstring).

    ``topk_logprobs``/``topk_indices``: (positions, k), sorted descending; ``tail_logmass``:
    (positions,), log of the base mass outside the top-k (``-inf`` when k covers the vocabulary);
    ``tail_indices``/``tail_logprobs``: (positions, m) tokens sampled from the base's tail and
    their base log-probs, or None for the lower-bound estimator.
    """
    n, vocab = logprobs.shape
    if topk_logprobs.shape != topk_indices.shape or topk_logprobs.shape[0] != n:
        raise ValueError(f"top-k shapes {tuple(topk_logprobs.shape)}, {tuple(topk_indices.shape)} do not "
                         f"match logprobs {tuple(logprobs.shape)}")
    if tail_logmass.shape != (n,):
        raise ValueError(f"tail_logmass has shape {tuple(tail_logmass.shape)}, expected ({n},)")
    if (tail_indices is None) != (tail_logprobs is None) or (
        tail_indices is not None and (tail_indices.shape != tail_logprobs.shape or tail_indices.shape[0] != n)
    ):
        raise ValueError("tail_indices and tail_logprobs must both be given, with shape (positions, m)")
    k = topk_indices.shape[1]
    idx = topk_indices.long()
    a = topk_logprobs.double()  # (n, k)
    b = logprobs.gather(-1, idx).double()  # (n, k)
    p0, p = a.exp(), b.exp()
    fwd = (p0 * (a - b)).sum(-1)
    rev = (p * (b - a)).sum(-1)
    tv = 0.5 * (p0 - p).abs().sum(-1)
    if k < vocab:
        tail0 = tail_logmass.double().exp()
        tail = (1.0 - p.sum(-1)).clamp_min(0.0)
        small = tail < 1e-4
        if small.any():  # cancellation: recompute the tail as a log-sum-exp over non-top-k tokens
            rows = logprobs[small].float().scatter(-1, idx[small], float("-inf"))
            tail[small] = rows.logsumexp(-1).double().exp()
        fwd = fwd + _xlogy(tail0, tail0) - _xlogy(tail0, tail)
        rev = rev + _xlogy(tail, tail) - _xlogy(tail, tail0)
        if tail_indices is None or tail_indices.shape[1] == 0:
            tv = tv + 0.5 * (tail0 - tail).abs()
        else:
            log_q0 = tail_logprobs.double() - tail_logmass.double()[:, None]  # (n, m)
            log_q = logprobs.gather(-1, tail_indices.long()).double() - tail.clamp_min(1e-300).log()[:, None]
            log_r = (log_q - log_q0).clamp(-700.0, 700.0)
            r = log_r.exp()
            live = tail0 > 0  # a row without base tail mass has nothing to estimate (and NaN ratios)
            zero = torch.zeros_like(tail0)
            fwd = fwd + torch.where(live, tail0 * ((r - 1) - log_r).mean(-1), zero)
            rev = rev + torch.where(live, tail * (r * log_r - (r - 1)).mean(-1), zero)
            tv = tv + 0.5 * torch.where(live, (tail0[:, None] - tail[:, None] * r).abs().mean(-1), tail)
    agree = (logprobs.argmax(-1) == idx[:, 0]).double()
    # the divergences are >= 0; float32 inputs can leave -1e-8 rounding residue
    return TokenDivergences(fwd.clamp_min(0), rev.clamp_min(0), tv.clamp_min(0), token_entropy(logprobs), agree)


def _xlogy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x log y with 0 log 0 = 0 and y floored at 1e-300 where x > 0 (finite, very large)."""
    return torch.special.xlogy(x, torch.where(x > 0, y.clamp_min(1e-300), y))


# --------------------------------------------------------------------------- per checkpoint
@dataclass(frozen=True)
class Summary:
    """Mean and percentiles (linear interpolation) of per-probe values."""

    mean: float
    p10: float
    p25: float
    p50: float
    p90: float


def summarize(values: np.ndarray) -> Summary:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D array of per-probe values, got shape {values.shape}")
    p10, p25, p50, p90 = np.percentile(values, [10, 25, 50, 90])
    return Summary(float(values.mean()), float(p10), float(p25), float(p50), float(p90))


@dataclass(frozen=True)
class ProbeDivergence:
    """One probe: statistics averaged over its completion tokens.

    ``mean_logprob`` is the checkpoint's mean log-prob (nats/token) of the completion tokens and
    ``base_mean_logprob`` the base's, from the cache.
    """

    forward_kl: float
    reverse_kl: float
    total_variation: float
    entropy: float
    top1_agreement: float
    mean_logprob: float
    base_mean_logprob: float
    n_tokens: int
    from_reference: bool


@dataclass(frozen=True)
class ProbeSetDivergence:
    """A checkpoint against the base on one probe set (forward/reverse KL and entropy in nats).

    Each `Summary` summarises the per-probe means. ``base_tail_mass_mean`` is the mean base mass
    outside the cached top-k, the scale of the (lower-bound) approximation error.
    """

    probe_set: str
    domain: str
    k: int
    n_probes: int
    n_tokens: int
    forward_kl: Summary
    reverse_kl: Summary
    total_variation: Summary
    entropy: Summary
    top1_agreement: Summary
    base_tail_mass_mean: float
    per_probe: tuple[ProbeDivergence, ...]


def _segment_means(values: torch.Tensor, segment: torch.Tensor, n: int) -> np.ndarray:
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, segment, values.double().cpu())
    counts = torch.zeros(n, dtype=torch.float64).index_add_(0, segment, torch.ones_like(values, dtype=torch.float64).cpu())
    return (sums / counts).numpy()


@torch.no_grad()
def probe_divergence(model, cache: BaseTopKCache, *, batch_size: int = 16) -> ProbeSetDivergence:
    """One teacher-forced pass of ``model`` (the checkpoint) over the cached probe sequences.

    The checkpoint must share the base's tokenizer and vocabulary size.
    """
    vocab = model.get_output_embeddings().weight.shape[0]
    if vocab != cache.vocab_size:
        raise ValueError(f"checkpoint vocabulary has {vocab} tokens, the base cache {cache.vocab_size}; "
                         "divergences need the same tokenizer")
    sequences = cache.sequences()
    lengths = cache.completion_lengths.long()
    starts = torch.cumsum(lengths, 0) - lengths
    n_tok, n_probe = cache.n_tokens, cache.n_probes
    stats = {name: torch.empty(n_tok, dtype=torch.float64) for name in STATISTICS}
    token_lp = torch.empty(n_tok, dtype=torch.float64)
    for chunk, logprobs in completion_logprob_batches(model, sequences, batch_size=batch_size):
        rows = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for i in chunk])
        dev = logprobs.device
        result = topk_token_divergences(
            logprobs,
            topk_logprobs=cache.topk_logprobs[rows].to(dev),
            topk_indices=cache.topk_indices[rows].to(dev),
            tail_logmass=cache.tail_logmass[rows].to(dev),
            tail_indices=cache.tail_indices[rows].to(dev),
            tail_logprobs=cache.tail_logprobs[rows].to(dev),
        )
        for name in STATISTICS:
            stats[name][rows] = getattr(result, name).cpu()
        targets = torch.cat([torch.as_tensor(sequences[i][1]) for i in chunk]).to(dev)
        token_lp[rows] = logprobs.gather(-1, targets[:, None]).squeeze(-1).double().cpu()

    segment = torch.repeat_interleave(torch.arange(n_probe), lengths)
    per = {name: _segment_means(stats[name], segment, n_probe) for name in STATISTICS}
    lp = _segment_means(token_lp, segment, n_probe)
    base_lp = _segment_means(cache.token_logprobs, segment, n_probe)
    from_ref = cache.from_reference.tolist()
    per_probe = tuple(
        ProbeDivergence(
            **{name: float(per[name][i]) for name in STATISTICS},
            mean_logprob=float(lp[i]),
            base_mean_logprob=float(base_lp[i]),
            n_tokens=int(lengths[i]),
            from_reference=bool(from_ref[i]),
        )
        for i in range(n_probe)
    )
    return ProbeSetDivergence(
        probe_set=cache.probe_set,
        domain=cache.domain,
        k=cache.k,
        n_probes=n_probe,
        n_tokens=n_tok,
        **{name: summarize(per[name]) for name in STATISTICS},
        base_tail_mass_mean=float(cache.tail_logmass.double().exp().mean()),
        per_probe=per_probe,
    )
