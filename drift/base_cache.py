"""The base model's side of the probe statistics, computed once per (base, probe set).

`build_base_cache` teacher-forces every probe through the base (generating greedy continuations
for items without a reference, and greedy answers for items with a checkable answer) and keeps,
per completion position, the top-k log-probs, their token ids, the log tail mass and m tokens
sampled from the tail with their log-probs; see `drift.divergence` for how checkpoint
statistics are computed from them.

Persistence: `BaseTopKCache.to_bytes()` / `from_bytes()` (or `save(path)` / `load(path)`) use the
safetensors format: plain tensors plus the scalar fields as JSON under the header metadata key
``"forgetwatch"`` (``format = "forgetwatch.base_topk.v1"``). Loading executes no pickled code.
Size: about 8·(k + m) + 16 bytes per completion token (k = 64, m = 16: ~0.65 KiB per token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from drift.encoding import encode_probe_items
from drift.models import completion_logprob_batches, greedy_generate_ids, model_device, token_entropy
from drift.probes import ProbeSet

CACHE_FORMAT = "forgetwatch.base_topk.v1"
_TENSOR_FIELDS = (
    "input_ids",
    "prompt_lengths",
    "completion_lengths",
    "from_reference",
    "topk_logprobs",
    "topk_indices",
    "tail_logmass",
    "tail_indices",
    "tail_logprobs",
    "token_logprobs",
    "entropy",
)


@dataclass(frozen=True, eq=False)
class BaseTopKCache:
    """The base model's side of the probe statistics for one (base, probe set).

    Tensors (P probes, N = Σ completion lengths positions, concatenated in probe order):
    ``input_ids`` int32 (Σ prompt + completion lengths,), ``prompt_lengths`` and
    ``completion_lengths`` int32 (P,), ``from_reference`` bool (P,) (False: the completion is the
    base's greedy continuation), ``topk_logprobs`` float32 (N, k) sorted descending,
    ``topk_indices`` int32 (N, k), ``tail_logmass`` float32 (N,), ``tail_indices`` int32 (N, m) and
    ``tail_logprobs`` float32 (N, m) (m tokens drawn from the base's tail with their base log-probs;
    m = 0 for the lower-bound estimator), ``token_logprobs`` float32 (N,)
    (base log-prob of each completion token), ``entropy`` float32 (N,) (base entropy).
    ``answers`` and ``base_completions`` hold, per probe, the checkable answer and the base's
    decoded greedy completion (None where the item has no answer).
    """

    probe_set: str
    domain: str
    probe_fingerprint: str
    base_model: str
    k: int
    vocab_size: int
    max_new_tokens: int
    answers: tuple[str | None, ...]
    base_completions: tuple[str | None, ...]
    input_ids: torch.Tensor
    prompt_lengths: torch.Tensor
    completion_lengths: torch.Tensor
    from_reference: torch.Tensor
    topk_logprobs: torch.Tensor
    topk_indices: torch.Tensor
    tail_logmass: torch.Tensor
    tail_indices: torch.Tensor
    tail_logprobs: torch.Tensor
    token_logprobs: torch.Tensor
    entropy: torch.Tensor

    @property
    def n_probes(self) -> int:
        return int(self.prompt_lengths.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.completion_lengths.sum())

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        """Per probe: (prompt ids, completion ids)."""
        ids, out, pos = self.input_ids.tolist(), [], 0
        for lp, lc in zip(self.prompt_lengths.tolist(), self.completion_lengths.tolist(), strict=True):
            out.append((ids[pos : pos + lp], ids[pos + lp : pos + lp + lc]))
            pos += lp + lc
        return out

    def to_bytes(self) -> bytes:
        """safetensors bytes; the scalar fields travel as JSON in the header metadata."""
        meta = {
            "format": CACHE_FORMAT,
            "probe_set": self.probe_set,
            "domain": self.domain,
            "probe_fingerprint": self.probe_fingerprint,
            "base_model": self.base_model,
            "k": self.k,
            "vocab_size": self.vocab_size,
            "max_new_tokens": self.max_new_tokens,
            "answers": list(self.answers),
            "base_completions": list(self.base_completions),
        }
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSOR_FIELDS}
        return st_save(tensors, metadata={"forgetwatch": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> BaseTopKCache:
        if len(data) < 8:
            raise ValueError(f"not a base top-k cache: {len(data)} bytes")
        header_len = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8 : 8 + header_len])
            meta = json.loads(header["__metadata__"]["forgetwatch"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a base top-k cache (bad safetensors header: {exc})") from None
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"unsupported cache format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        tensors = st_load(data)
        missing = [name for name in _TENSOR_FIELDS if name not in tensors]
        if missing:
            raise ValueError(f"cache is missing tensors {missing}")
        meta.pop("format")
        meta["answers"], meta["base_completions"] = tuple(meta["answers"]), tuple(meta["base_completions"])
        return cls(**meta, **{name: tensors[name] for name in _TENSOR_FIELDS})

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> BaseTopKCache:
        return cls.from_bytes(Path(path).read_bytes())


@torch.no_grad()
def build_base_cache(
    model,
    tokenizer,
    probe_set: ProbeSet,
    *,
    k: int = 64,
    tail_samples: int = 16,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    base_model: str = "",
    random_state: int | None = 0,
) -> BaseTopKCache:
    """Run the base model once over a probe set and keep what later checkpoints need.

    Items without a reference are completed by the base's greedy continuation (at most
    ``max_new_tokens`` tokens, cut after EOS); items with an answer are greedy-decoded too, and
    the decoded text is kept for the accuracy comparison. ``tail_samples`` tokens per position are
    drawn (seeded by ``random_state``) from the base's tail for the unbiased tail correction.
    Prompts and references become tokens through ``drift.encoding`` (a chat probe set is rendered
    with the tokenizer's chat template; raises ``NoChatTemplate`` when it has none).
    """
    if k < 1 or tail_samples < 0 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"need k >= 1, tail_samples >= 0, max_new_tokens >= 1 and batch_size >= 1, got "
                         f"{k}, {tail_samples}, {max_new_tokens}, {batch_size}")
    if not isinstance(probe_set, ProbeSet):
        raise ValueError(f"probe_set must be a ProbeSet, got {type(probe_set).__name__}")  # noqa: TRY004
    vocab = model.get_output_embeddings().weight.shape[0]
    max_positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    encoded = encode_probe_items(tokenizer, probe_set)  # chat sets: rendered with the chat template
    prompt_ids = [prompt for prompt, _ in encoded]
    need_greedy = [n for n, it in enumerate(probe_set.items) if it.reference is None or it.answer is not None]
    greedy = dict(zip(need_greedy, greedy_generate_ids(
        model, [prompt_ids[n] for n in need_greedy], max_new_tokens=max_new_tokens, batch_size=batch_size,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ) if need_greedy else [], strict=True))
    sequences = []
    for n, item in enumerate(probe_set.items):
        if item.reference is not None:
            completion = encoded[n][1]
        else:
            completion = greedy[n]
            if not completion:
                raise ValueError(f"probe {n} of {probe_set.name!r}: the base generated nothing for {item.prompt!r}")
        if max_positions and len(prompt_ids[n]) + len(completion) > max_positions:
            raise ValueError(f"probe {n} of {probe_set.name!r} is {len(prompt_ids[n]) + len(completion)} tokens, "
                             f"longer than the model's {max_positions} positions")
        sequences.append((prompt_ids[n], completion))

    lengths = torch.tensor([len(c) for _, c in sequences])
    starts = torch.cumsum(lengths, 0) - lengths
    n_tok, kk = int(lengths.sum()), min(k, vocab)
    m = tail_samples if kk < vocab else 0
    gen = torch.Generator(device=model_device(model))
    if random_state is None:
        gen.seed()  # non-deterministic, this generator only
    else:
        gen.manual_seed(random_state)
    topk_lp = torch.empty((n_tok, kk), dtype=torch.float32)
    topk_ix = torch.empty((n_tok, kk), dtype=torch.int32)
    tail = torch.empty(n_tok, dtype=torch.float32)
    tail_ix = torch.empty((n_tok, m), dtype=torch.int32)
    tail_lp = torch.empty((n_tok, m), dtype=torch.float32)
    tok_lp = torch.empty(n_tok, dtype=torch.float32)
    ent = torch.empty(n_tok, dtype=torch.float32)
    for chunk, logprobs in completion_logprob_batches(model, sequences, batch_size=batch_size):
        rows = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for i in chunk])
        targets = torch.cat([torch.as_tensor(sequences[i][1]) for i in chunk]).to(logprobs.device)
        values, indices = logprobs.topk(kk, dim=-1)  # (rows, k), sorted descending
        rest = logprobs.scatter(-1, indices, float("-inf")).logsumexp(-1) if kk < vocab else \
            torch.full((len(rows),), float("-inf"), device=logprobs.device)
        topk_lp[rows], topk_ix[rows], tail[rows] = values.cpu(), indices.int().cpu(), rest.cpu()
        if m:
            cond = (logprobs - rest[:, None]).exp().scatter(-1, indices, 0.0)  # base tail, renormalised
            empty = ~(cond.sum(-1) > 0)  # no tail mass left in float32: any draw will do (weight T0 = 0)
            cond[empty] = 1.0
            draws = torch.multinomial(cond, m, replacement=True, generator=gen)  # (rows, m)
            tail_ix[rows], tail_lp[rows] = draws.int().cpu(), logprobs.gather(-1, draws).cpu()
        tok_lp[rows] = logprobs.gather(-1, targets[:, None]).squeeze(-1).cpu()
        ent[rows] = token_entropy(logprobs).float().cpu()

    texts = [tokenizer.decode(greedy[n], skip_special_tokens=True) if item.answer is not None else None
             for n, item in enumerate(probe_set.items)]
    return BaseTopKCache(
        probe_set=probe_set.name,
        domain=probe_set.domain,
        probe_fingerprint=probe_set.fingerprint(),
        base_model=base_model,
        k=kk,
        vocab_size=int(vocab),
        max_new_tokens=max_new_tokens,
        answers=tuple(item.answer for item in probe_set.items),
        base_completions=tuple(texts),
        input_ids=torch.tensor([t for p, c in sequences for t in (*p, *c)], dtype=torch.int32),
        prompt_lengths=torch.tensor([len(p) for p, _ in sequences], dtype=torch.int32),
        completion_lengths=lengths.int(),
        from_reference=torch.tensor([item.reference is not None for item in probe_set.items]),
        topk_logprobs=topk_lp,
        topk_indices=topk_ix,
        tail_logmass=tail,
        tail_indices=tail_ix,
        tail_logprobs=tail_lp,
        token_logprobs=tok_lp,
        entropy=ent,
    )
