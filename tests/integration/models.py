"""Real checkpoints for service tests: a tiny GPT-2 saved sharded, and a few fine-tuning steps of it."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast


def save_tiny_gpt2_run(root: Path, *, steps: int = 2, lr: float = 1e-2, max_shard_size: str = "40KB") -> list[Path]:
    """Save the base at root/base and one checkpoint per optimizer step at root/step-N; return them."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(root / "base", max_shard_size=max_shard_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    paths = [root / "base"]
    for step in range(1, steps + 1):
        ids = torch.randint(0, 64, (4, 16))
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.save_pretrained(root / f"step-{step}", max_shard_size=max_shard_size)
        paths.append(root / f"step-{step}")
    return paths


CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789 +-=*.,?"
def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARACTERS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_gpt2(tokenizer: PreTrainedTokenizerFast, *, n_positions: int = 128) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)
