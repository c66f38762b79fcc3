"""What probe and sample jobs compute from model files, run in the isolated child process.

Every function a job hands to ``run_isolated`` lives here: it opens the base or checkpoint folder
(transformers, peft, safetensors), computes on the loaded model and returns plain picklable values
(bytes, frozen dataclasses, dicts of numbers). Nothing here touches the database or the queue; the
task stores what comes back. A truncated file faulting under its memory map, or a loader that
crashes, then ends the child, not the worker.

The base model stays loaded in the child between jobs (one base per child; a worker runs one child
per concurrent job).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from drift.base_cache import BaseTopKCache, build_base_cache
from drift.checkpoints import check_adapter_fits, is_adapter_folder
from drift.confined import check_model_folder
from drift.diversity import collapse_signals
from drift.encoding import encode_probe_items
from drift.forgetting import CheckpointEvaluation, evaluate_checkpoint
from drift.models import LOADING
from drift.probes import ProbeSet
from drift.shift import classifier_two_sample_test, embedding_shift_test, prompt_similarity

Roots = tuple[Path, ...]
GENERATION_TOKENS = 64
SHIFT_ALPHA = 0.01  # a shift is "detected" at this level; on-call sees the p-value too
MIN_FOR_SHIFT_TEST = 8


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _tokenizer_folder(checkpoint: Path, base: Path) -> Path:
    """Trainer checkpoints often carry no tokenizer; the base's is the one they were trained with."""
    has_tokenizer = any((checkpoint / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return checkpoint if has_tokenizer else base


def load(model_folder: Path, tokenizer_folder: Path, device: str, roots: Roots) -> tuple[Any, Any]:
    """A model and tokenizer, after checking that every file transformers may open in their
    folders lies inside `roots` (transformers opens files by name: no symlink escapes, no index
    entries pointing elsewhere, bounded JSON) and that config.json describes the stored weights
    (a hostile config must not make transformers allocate what it describes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from drift.models import check_config_fits_weights, resolve_device

    for folder in dict.fromkeys((model_folder, tokenizer_folder)):
        check_model_folder(folder, roots)
    check_config_fits_weights(model_folder, roots=roots)
    target = resolve_device(device)
    with LOADING:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(model_folder, local_files_only=True)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.float() if target.type == "cpu" else model
    return model.to(target).eval(), tokenizer


def load_checkpoint(checkpoint: Path, base: Path, device: str, roots: Roots) -> tuple[Any, Any]:
    """The checkpoint's model and tokenizer. A peft adapter folder is applied to a fresh copy of the
    base in memory (no merged copy is written), after checking it was trained on that base."""
    tokenizer_folder = _tokenizer_folder(checkpoint, base)
    if not is_adapter_folder(checkpoint):
        return load(checkpoint, tokenizer_folder, device, roots)
    from drift.models import attach_adapter

    check_model_folder(checkpoint, roots)
    check_adapter_fits(checkpoint, base, roots=roots)
    model, tokenizer = load(base, tokenizer_folder, device, roots)
    with LOADING:
        model = attach_adapter(model, checkpoint)
    return model, tokenizer


@functools.lru_cache(maxsize=1)
def base_model(path: str, device: str, roots: Roots) -> tuple[Any, Any]:
    """The base stays loaded between jobs of the same base (one base per process)."""
    return load(Path(path), Path(path), device, roots)


def cap_new_tokens(model: Any, longest: int) -> int:
    """Up to GENERATION_TOKENS new tokens, but never past the model's context window."""
    config = model.config
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not context:
        return GENERATION_TOKENS
    return max(1, min(GENERATION_TOKENS, int(context) - longest))


def build_base_caches(base: str, probe_sets: Sequence[tuple[int, ProbeSet]], *, base_key: str, k: int,
                      device: str, roots: Roots) -> list[tuple[int, bytes]]:
    """The base's side of each probe set (``BaseTopKCache.to_bytes``), stored under ``base_key``
    (the URI the run gives); the base model folder is ``base``."""
    model, tokenizer = base_model(base, device, roots)
    built = []
    for probe_set_id, probe_set in probe_sets:
        longest = max(len(prompt) + len(reference or ())
                      for prompt, reference in encode_probe_items(tokenizer, probe_set))
        cache = build_base_cache(model, tokenizer, probe_set, k=k, base_model=base_key,
                                 max_new_tokens=cap_new_tokens(model, longest))
        built.append((probe_set_id, cache.to_bytes()))
    return built


def evaluate(checkpoint: str, base: str, caches: Sequence[tuple[int, bytes]], *, device: str,
             roots: Roots) -> list[tuple[int, CheckpointEvaluation]]:
    """The checkpoint's evaluation on each probe set against the base's cache."""
    model, tokenizer = load_checkpoint(Path(checkpoint), Path(base), device, roots)
    return [(probe_set_id, evaluate_checkpoint(model, tokenizer, BaseTopKCache.from_bytes(data), random_state=0))
            for probe_set_id, data in caches]


@functools.lru_cache(maxsize=1)
def _embedder(base: str, device: str, roots: Roots) -> Any:
    from drift.embeddings import load_embedder

    model, tokenizer = base_model(base, device, roots)
    return load_embedder(fallback_model=model, fallback_tokenizer=tokenizer, device="cpu")


@functools.lru_cache(maxsize=20_000)
def _base_response(base: str, device: str, roots: Roots, prompt: str) -> str:
    from drift.models import sample_responses

    model, tokenizer = base_model(base, device, roots)
    limit = cap_new_tokens(model, len(tokenizer(prompt)["input_ids"]))
    return str(sample_responses(model, tokenizer, [prompt], do_sample=False, max_new_tokens=limit).texts[0])


def sample_signals(base: str | None, prompts: Sequence[str], responses: Sequence[str],
                   logprobs: Sequence[Sequence[float]] | None, *, device: str,
                   roots: Roots) -> tuple[dict[str, Any], dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """(values, data, pairs) of a sample batch: collapse signals of the responses and, with a base model
    folder, their shift from the base's greedy responses to the same prompts (embedded by MiniLM or
    the base's hidden states; n-gram diversity in the base's own tokens); ``pairs`` are the embeddings
    (base's, batch's), rows paired by prompt, or None without a base."""
    values: dict[str, Any] = {"n_samples": len(responses)}
    data: dict[str, Any] = {}
    tokenize = current = pairs = None
    if base is not None:
        tokenize = base_model(base, device, roots)[1].tokenize
        embedder = _embedder(base, device, roots)
        base_responses = [_base_response(base, device, roots, prompt) for prompt in prompts]
        reference, current = embedder.embed(base_responses), embedder.embed(responses)
        pairs = (reference, current)
        similarity = prompt_similarity(reference, current)
        values.update(similarity_median=similarity.median, similarity_p25=similarity.p25,
                      similarity_p10=similarity.p10, similarity_low_ratio=similarity.low_share,
                      similarity_histogram=list(similarity.histogram))
        values["distinct2_base"] = collapse_signals(base_responses, embeddings=reference, tokenize=tokenize).distinct_2
        if len(responses) >= MIN_FOR_SHIFT_TEST:
            shift = embedding_shift_test(reference, current, paired=True, alpha=SHIFT_ALPHA, random_state=0)
            auc = classifier_two_sample_test(reference, current, random_state=0).auc
            values.update(mmd2=shift.mmd2, shift_pvalue=shift.p_value, shift_detected=shift.drift_detected,
                          classifier_auc=auc, centroid_distance=shift.centroid_cosine_distance)
            data["shift"] = {k: getattr(shift, k) for k in ("p_value", "statistic", "mmd_p_value",
                                                             "whitened_mmd_p_value", "typicality_p_value")}
    else:
        data["reference"] = "no base model folder: diversity only"
    signals = collapse_signals(responses, embeddings=current, token_logprobs=logprobs, tokenize=tokenize)
    values.update(distinct1=signals.distinct_1, distinct2=signals.distinct_2,
                  repetition_ratio=signals.repeated_ngram_rate, degenerate_ratio=signals.dominated_share,
                  length_mean=signals.length_mean, length_std=signals.length_std,
                  sample_entropy=signals.mean_token_entropy)
    data["signals"] = {k: getattr(signals, k) for k in ("mode_response_share", "mean_pairwise_similarity")}
    return values, data, pairs


def embed_texts(base: str | None, groups: dict[str, list[str]], *, device: str,
                roots: Roots) -> tuple[str, dict[str, np.ndarray]]:
    """(embedder name, key -> (len(texts), dim) embeddings) of each group of texts: MiniLM when the
    package is installed, else the base model's hidden states (ValueError when neither is there)."""
    from drift.embeddings import load_embedder, minilm_model_path

    if minilm_model_path() is not None or base is None:
        embedder = load_embedder(device="cpu")
    else:
        embedder = _embedder(base, device, roots)
    return embedder.name, {key: embedder.embed(texts) for key, texts in groups.items()}
