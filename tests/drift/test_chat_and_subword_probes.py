"""Probes on what people train: chat-templated probe sets, a BPE tokenizer, a Llama model with a
peft LoRA adapter applied in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from drift.base_cache import build_base_cache
from drift.checkpoint_io import CheckpointError
from drift.checkpoints import check_adapter_fits
from drift.diversity import collapse_signals
from drift.encoding import NoChatTemplate, encode_probe_items
from drift.forgetting import evaluate_checkpoint
from drift.models import attach_adapter
from drift.probes import ProbeItem, ProbeSet, chat_item, dumps_probe_set, loads_probe_set
from tests.integration.models import bpe_tokenizer, save_lora_adapter, tiny_llama

QUESTIONS = [("capital of france?", "paris"), ("capital of italy?", "rome"), ("two plus two?", "four"),
             ("capital of spain?", "madrid")]


def chat_set() -> ProbeSet:
    system = {"role": "system", "content": "answer with one word"}
    return ProbeSet("capitals", "ood", tuple(
        chat_item([system, {"role": "user", "content": q}], reference=a, answer=a) for q, a in QUESTIONS),
        format="chat")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[torch.nn.Module, object, Path]:
    """(model, tokenizer, the folder both are saved in)."""
    base = tmp_path_factory.mktemp("llama") / "base"
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer).eval()
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    return model, tokenizer, base


def test_chat_items_score_the_assistant_reply_after_the_generation_prompt():
    tokenizer = bpe_tokenizer()
    (prompt, completion), *_ = encode_probe_items(tokenizer, chat_set())
    assert tokenizer.decode(prompt) == ("<|im_start|>system\nanswer with one word<|im_end|>\n"
                                        "<|im_start|>user\ncapital of france?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(completion) == "paris<|im_end|>\n"
    assert prompt[-1] != completion[0] and len(completion) < len(prompt)


def test_a_chat_set_for_a_tokenizer_without_a_template_names_the_fix():
    with pytest.raises(NoChatTemplate, match="no chat template.*chat_template"):
        encode_probe_items(bpe_tokenizer(chat_template=False), chat_set())


def test_text_items_on_a_subword_tokenizer_keep_their_reference_tokens():
    tokenizer = bpe_tokenizer()
    probe_set = ProbeSet("t", "ood", (ProbeItem("the capital of italy is", reference=" rome"),))
    (prompt, completion), = encode_probe_items(tokenizer, probe_set)
    assert tokenizer.decode(completion) == " rome" and len(prompt) > 2


def test_chat_probe_sets_round_trip_through_jsonl_and_fingerprint_their_messages():
    probe_set = chat_set()
    again = loads_probe_set(dumps_probe_set(probe_set))
    assert again == probe_set and again.format == "chat"
    other = ProbeSet("capitals", "ood", (chat_item([{"role": "user", "content": "capital of france?"}],
                                                   reference="paris", answer="paris"), *probe_set.items[1:]),
                     format="chat")
    assert other.fingerprint() != probe_set.fingerprint()  # the system turn is part of the probe
    with pytest.raises(ValueError, match="last message must be the user's"):
        chat_item([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(ValueError, match="needs a chat probe set"):
        loads_probe_set('{"probe_set": "x", "domain": "ood"}\n{"messages": [{"role": "user", "content": "hi"}]}')


def test_lora_adapter_on_a_llama_base_moves_probe_kl_only_when_it_changes_weights(llama, tmp_path):
    model, tokenizer, _ = llama
    cache = build_base_cache(model, tokenizer, chat_set(), k=16, max_new_tokens=8)
    assert cache.vocab_size == len(tokenizer) and cache.n_probes == len(QUESTIONS)
    base_copy = tiny_llama(tokenizer).eval()  # same seed, same weights: attach_adapter wraps in place
    zero = attach_adapter(base_copy, save_lora_adapter(model, tmp_path / "zero", scale=0.0))
    identical = evaluate_checkpoint(zero, tokenizer, cache, random_state=0)
    assert abs(identical.divergence.forward_kl.mean) < 1e-6
    assert identical.forgetting.log_likelihood.change == pytest.approx(0.0, abs=1e-6)
    moved = attach_adapter(tiny_llama(tokenizer).eval(), save_lora_adapter(model, tmp_path / "big", scale=0.5))
    changed = evaluate_checkpoint(moved, tokenizer, cache, random_state=0)
    assert changed.divergence.forward_kl.mean > 1e-3 and changed.divergence.reverse_kl.mean > 1e-3
    assert changed.forgetting.log_likelihood.change != pytest.approx(0.0, abs=1e-4)


def test_adapter_for_another_base_is_refused_with_what_to_do(llama, tmp_path):
    model, tokenizer, base = llama
    save_lora_adapter(model, tmp_path / "fits", scale=0.1)
    check_adapter_fits(tmp_path / "fits", base)
    wider = tiny_llama(tokenizer, hidden_size=48)
    save_lora_adapter(wider, tmp_path / "wider", scale=0.1)
    with pytest.raises(CheckpointError, match="does not fit the run's base model.*trained from"):
        check_adapter_fits(tmp_path / "wider", base)


def test_diversity_counts_subword_tokens_of_the_model():
    tokenizer = bpe_tokenizer()
    same = collapse_signals(["the capital of france is paris"] * 4, tokenize=tokenizer.tokenize)
    varied = collapse_signals(["the capital of france is paris", "two plus two is four", "cats and dogs",
                               "the quick brown fox"], tokenize=tokenizer.tokenize)
    assert same.distinct_2 < varied.distinct_2
    assert varied.distinct_1 > same.distinct_1
