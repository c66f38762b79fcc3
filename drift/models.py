"""Loading causal LMs from local folders and decoding from them (greedy and sampled).

Nothing here touches a model hub: every load passes ``local_files_only=True`` and refuses a path
that is not an existing folder. Weights stay in the checkpoint's dtype on a GPU; on CPU half
precision is upcast to float32 (CPU half-precision matmuls are slow and some kernels are
missing). Statistics are always computed from float32 logits by the callers.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

LOADING = threading.RLock()
"""Held around every transformers ``from_pretrained`` in the process: loading swaps global state
(meta-device initialisation), so two threads loading at once corrupt each other's models (a probe
job's model then fails to move with "Cannot copy out of meta tensor"). Loads are short next to what
is computed with the model, so they are serialized; re-entrant, so a load may check its config
(`check_config_fits_weights`, itself under the lock) while holding it."""


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` picks the first CUDA device when one is available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None


def load_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto"):
    """Load ``(model, tokenizer)`` from a local folder with AutoModelForCausalLM/AutoTokenizer.

    ``dtype="auto"`` keeps the checkpoint's dtype, except float16/bfloat16 on CPU which become
    float32. The model is put in eval mode on ``device`` (``"auto"``: a GPU when available).
    The tokenizer gets ``pad_token = eos_token`` when it has no pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"model path {str(path)!r} is not a local folder (hub downloads are disabled)")
    target = resolve_device(device)
    with LOADING:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    if target.type == "cpu" and model.dtype in (torch.float16, torch.bfloat16):
        model = model.float()
    model = model.to(target).eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def attach_adapter(model, folder: str | Path):
    """``model`` with the peft adapter saved in ``folder`` applied (in memory: no merged copy is
    written; ``model``'s modules are wrapped in place, so pass a model of its own). Eval mode."""
    from peft import PeftModel

    with LOADING:
        return PeftModel.from_pretrained(model, Path(folder), is_trainable=False, local_files_only=True).eval()


MAX_LAYERS = 1024  # above any released model; a hostile config could ask for millions of modules


def check_config_fits_weights(folder: str | Path, *, roots: Sequence[Path] | None = None) -> None:
    """Refuse a model folder whose ``config.json`` describes a model far larger than its weights.

    transformers allocates what the config describes before reading any weight, so a config with
    ``vocab_size = 10**11`` and a 1 kB weights file would allocate hundreds of GB. The model is
    built on the meta device (no memory) and its parameter and buffer counts are compared with the
    tensors the folder actually stores. Raises ``CheckpointError``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from drift.checkpoint_io import CheckpointError
    from drift.checkpoints import list_tensors
    from drift.confined import read_json

    folder = Path(folder)
    raw = read_json(folder / "config.json", roots)
    layers = [raw.get(k) for k in ("num_hidden_layers", "n_layer", "num_layers") if k in raw]
    if not all(type(n) is int and 0 < n <= MAX_LAYERS for n in layers):
        raise CheckpointError(f"{folder}/config.json: layer count is not an integer in 1..{MAX_LAYERS}; "
                              "not a config forgetwatch loads")
    stored = sum(t.numel for t in list_tensors(folder, roots=roots) if t.alias_of is None)
    try:
        with LOADING, torch.device("meta"):
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, KeyError, OSError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}/config.json: does not describe a loadable causal LM "
                              f"({type(exc).__name__}); re-save the model with save_pretrained") from None
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    if params > 2 * stored + 2**20 or buffers > stored + 2**28:
        raise CheckpointError(
            f"{folder}/config.json: describes {params} parameters and {buffers} buffer elements but the "
            f"folder stores {stored}; the config does not belong to these weights"
        )


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(model, pad_token_id: int | None) -> int:
    if pad_token_id is not None:
        return pad_token_id
    cfg = model.config
    for candidate in (getattr(cfg, "pad_token_id", None), getattr(cfg, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, list) and candidate:
            return candidate[0]
    return 0


def _eos_ids(model, eos_token_id: int | Sequence[int] | None) -> set[int]:
    value = eos_token_id if eos_token_id is not None else getattr(model.generation_config, "eos_token_id", None)
    if value is None:
        value = getattr(model.config, "eos_token_id", None)
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _cut_at_eos(row: list[int], eos: set[int]) -> list[int]:
    for j, tok in enumerate(row):
        if tok in eos:
            return row[: j + 1]
    return row


@torch.no_grad()
def greedy_generate_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> list[list[int]]:
    """Greedy continuations (token ids, cut after the first EOS, which is kept) of each prompt."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt must have at least one token")
    device, pad, eos = model_device(model), _pad_id(model, pad_token_id), _eos_ids(model, eos_token_id)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[list[int]] = [[] for _ in prompt_ids]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = _left_pad([prompt_ids[i] for i in chunk], pad, device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(eos) or None,
        )[:, ids.shape[1] :]
        for row, i in zip(generated.tolist(), chunk, strict=True):
            out[i] = _cut_at_eos(row, eos)
    return out


@dataclass(frozen=True)
class SampledResponses:
    """Decoded responses plus, per response, the model's log-prob of each sampled token and the
    entropy (nats) of its full next-token distribution at that step (temperature 1, unwarped)."""

    texts: tuple[str, ...]
    token_logprobs: tuple[tuple[float, ...], ...]
    token_entropies: tuple[tuple[float, ...], ...]


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    batch_size: int = 16,
    random_state: int | None = None,
) -> SampledResponses:
    """Sample one response per prompt (``do_sample=False`` for greedy), seeded by ``random_state``."""
    if not prompts:
        raise ValueError("prompts is empty")
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    device, pad = model_device(model), _pad_id(model, tokenizer.pad_token_id)
    eos = _eos_ids(model, tokenizer.eos_token_id)
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    for p, ids in zip(prompts, prompt_ids, strict=True):
        if not ids:
            raise ValueError(f"prompt {p!r} tokenizes to no tokens")
    texts, logprobs, entropies = [], [], []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if random_state is not None:
            torch.manual_seed(random_state)
        for start in range(0, len(prompts), batch_size):
            rows = prompt_ids[start : start + batch_size]
            ids, mask = _left_pad(rows, pad, device)
            extra = {"temperature": temperature, "top_p": top_p} if do_sample else {}
            result = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=pad,
                eos_token_id=sorted(eos) or None,
                output_logits=True,
                return_dict_in_generate=True,
                **extra,
            )
            new = result.sequences[:, ids.shape[1] :]  # (batch, steps)
            raw = torch.stack(result.logits, dim=1).float().log_softmax(-1)  # (batch, steps, vocab)
            tok_lp = raw.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            ent = -(raw.exp() * raw).nan_to_num(0.0).sum(-1)
            for r, row in enumerate(new.tolist()):
                kept = _cut_at_eos(row, eos)
                texts.append(tokenizer.decode(kept, skip_special_tokens=True))
                logprobs.append(tuple(tok_lp[r, : len(kept)].tolist()))
                entropies.append(tuple(ent[r, : len(kept)].tolist()))
    return SampledResponses(texts=tuple(texts), token_logprobs=tuple(logprobs), token_entropies=tuple(entropies))


def _supports_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def completion_logprob_batches(
    model, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 16
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Teacher-force each (prompt, completion) and yield ``(probe indices, logprobs)`` per batch:
    float32 log-softmax rows of shape (Σ completion lengths of the batch, vocab), in the order of
    the yielded indices, one row per completion token. Batches group similar lengths; only the
    needed positions go through the LM head when the model accepts ``logits_to_keep``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    keep_supported = _supports_logits_to_keep(model)
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i][0]), len(sequences[i][1])))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [list(sequences[i][0]) + list(sequences[i][1]) for i in chunk]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.as_tensor(row)
            mask[r, : len(row)] = 1
        # position t predicts token t + 1; completion tokens sit at [P, P + C)
        spans = [(len(sequences[i][0]) - 1, len(sequences[i][0]) + len(sequences[i][1]) - 1) for i in chunk]
        lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
        kwargs = {"logits_to_keep": torch.arange(lo, hi, device=device)} if keep_supported else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        offset = lo if keep_supported else 0  # logits: (batch, kept positions, vocab)
        picked = torch.cat([logits[r, s - offset : e - offset] for r, (s, e) in enumerate(spans)])
        yield chunk, picked.float().log_softmax(-1)


def token_entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats, float64) of each row of a (positions, vocab) log-softmax tensor."""
    ent = -(logprobs.exp() * logprobs).sum(-1)  # (positions,)
    bad = ent.isnan()
    if bad.any():  # -inf log-probs give 0 * -inf; recompute those rows with the 0 log 0 = 0 rule
        rows = logprobs[bad]
        ent[bad] = -torch.where(rows.isneginf(), torch.zeros_like(rows), rows.exp() * rows).sum(-1)
    return ent.double()
