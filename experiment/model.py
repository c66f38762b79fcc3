"""The experiment's model families, their tokenizers, sampling and ground-truth evaluation.

Everything is built locally from code: a `tokenizers` WordLevel model wrapped in
`PreTrainedTokenizerFast` (over single characters, or over words where every whole number below
200 is one token), and a GPT-2, Llama or Qwen2 causal LM from its config (`FAMILIES`); both are saved
with ``save_pretrained`` so ``AutoTokenizer`` / ``AutoModelForCausalLM`` load a checkpoint folder
with ``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging as hf_logging

from experiment.tasks import LETTER_ALPHABET, is_correct

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL = (PAD, EOS, UNK)
SYMBOLS = "+=B:>;RN,"
VOCAB = (*SPECIAL, *"0123456789", *SYMBOLS, *LETTER_ALPHABET)
"""The character vocabulary: every character of every task."""
WORD_VOCAB = (*SPECIAL, *SYMBOLS, *LETTER_ALPHABET, *(str(n) for n in range(200)))
"""The word vocabulary: whole numbers below 200 (every operand, sum and answer) are single tokens."""
PATTERNS = {"char": r".", "word": r"\d+|."}
"""How a tokenizer kind splits text into tokens (its `tokenizers` pre-tokenizer)."""
MAX_NEW_TOKENS = 5  # four reversed letters + <eos>; three sum digits or two letters + <eos> fit too

Architecture = Literal["gpt2", "llama", "qwen2"]
TokenizerKind = Literal["char", "word"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, tokenizer and size of a model family; the defaults are the demo's 0.4M-parameter
    character-level GPT-2.

    Two layers rather than three: on a shared 2-core CPU a third layer made pretraining to 98 %
    addition accuracy take about twice as long.
    """

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 32
    architecture: Architecture = "gpt2"
    tokenizer: TokenizerKind = "char"
    intermediate_size: int = 0
    """Llama / Qwen2 MLP width (GPT-2 uses 4 * n_embd)."""
    n_kv_head: int = 0
    """Llama / Qwen2 key-value heads (0: as many as query heads)."""

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


FAMILIES: dict[str, ModelConfig] = {
    "tiny-gpt2-char": ModelConfig(),
    "small-llama-word": ModelConfig(architecture="llama", tokenizer="word", n_layer=4, n_embd=192, n_head=4,
                                    intermediate_size=512, n_positions=32),
    "micro-qwen2-char": ModelConfig(architecture="qwen2", tokenizer="char", n_layer=3, n_embd=64, n_head=4,
                                    n_kv_head=2, intermediate_size=192, n_positions=32),
    # 10.7 M parameters, 72x micro-qwen2-char: pretrains to the targets on reverse-between in 200 steps
    # at lr 1e-3 (152 s on one shared core).
    "medium-gpt2-word": ModelConfig(architecture="gpt2", tokenizer="word", n_layer=6, n_embd=384, n_head=6,
                                    n_positions=32),
}
"""The model families of the labelled corpus: architecture, tokenizer and size all differ."""
DEFAULT_FAMILY = "tiny-gpt2-char"


def family_config(name: str) -> ModelConfig:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[name]


def build_tokenizer(kind: TokenizerKind = "char") -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `VOCAB` (``char``) or `WORD_VOCAB` (``word``), with ``<pad>`` and ``<eos>``."""
    if kind not in PATTERNS:
        raise ValueError(f"tokenizer kind must be one of {sorted(PATTERNS)}, got {kind!r}")
    vocab = VOCAB if kind == "char" else WORD_VOCAB
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PATTERNS[kind]), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_model(config: ModelConfig = ModelConfig(), *, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised model of the family without dropout (on-policy log-probs must match sampling)."""
    torch.manual_seed(seed)
    vocab = VOCAB if config.tokenizer == "char" else WORD_VOCAB
    ids = {"bos_token_id": vocab.index(EOS), "eos_token_id": vocab.index(EOS), "pad_token_id": vocab.index(PAD)}
    if config.architecture == "gpt2":
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=len(vocab), n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids))
    shared = {"vocab_size": len(vocab), "hidden_size": config.n_embd, "num_hidden_layers": config.n_layer,
              "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head or config.n_head,
              "intermediate_size": config.intermediate_size or 4 * config.n_embd,
              "max_position_embeddings": config.n_positions, "attention_dropout": 0.0,
              "tie_word_embeddings": True, **ids}
    if config.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**shared))
    if config.architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shared))
    raise ValueError(f"architecture must be gpt2, llama or qwen2, got {config.architecture!r}")


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' per-save/per-load progress bars, restoring the previous state."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_checkpoint(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path) -> Path:
    """``save_pretrained`` model (safetensors) and tokenizer into one folder."""
    path = Path(path)
    with quiet_progress_bars():
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
    return path


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load a checkpoint folder with the Auto classes, offline."""
    with quiet_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


class Codec:
    """Fast text <-> id conversion consistent with the tokenizer (the same split, the same ids).

    A vocabulary with multi-character tokens is a ``word`` tokenizer (`PATTERNS`), otherwise ``char``.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_tokens)
        self.to_id = {t: i for t, i in vocab.items() if t not in special}
        self.to_char = {i: t for t, i in self.to_id.items()}
        self._split = re.compile(PATTERNS["word" if any(len(t) > 1 for t in self.to_id) else "char"]).findall
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.vocab_size = len(vocab)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.to_id[t] for t in self._split(text)]
        except KeyError as exc:
            raise ValueError(f"token {exc.args[0]!r} of {text!r} is not in the vocabulary") from None

    def length(self, text: str) -> int:
        """Number of tokens of ``text``."""
        return len(self._split(text))

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts of equal token length -> ids, shape (batch, len)."""
        rows = [self.encode(t) for t in texts]
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise ValueError(f"encode_batch needs texts of equal token length, got lengths {sorted(lengths)}")
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids up to the first ``<eos>``; other special tokens dropped."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in self.to_char:
                out.append(self.to_char[i])
        return "".join(out)


@torch.no_grad()
def sample_ids(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (temperature > 0) or greedy-decode (temperature == 0) continuations.

    ``prompt_ids``: (batch, prompt_len), all prompts the same length (no padding needed).
    Returns ``tokens`` (batch, T) with ``<pad>`` after the first ``<eos>`` and ``mask`` (batch, T),
    true on response tokens up to and including the first ``<eos>``.
    """
    done = torch.zeros(len(prompt_ids), dtype=torch.bool)
    tokens, mask = [], []
    out = model(input_ids=prompt_ids, use_cache=True)
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()  # (batch, vocab)
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        mask.append(~done)
        done = done | (nxt == eos_id)
        if done.all():
            break
        # transformers 5 names the KV cache `cache`, 4.x `past_key_values`
        key = "cache" if "cache" in out else "past_key_values"
        out = model(input_ids=nxt[:, None], use_cache=True, **{key: out[key]})
    return torch.stack(tokens, 1), torch.stack(mask, 1)


def generate(
    model: torch.nn.Module,
    codec: Codec,
    prompts: Sequence[str],
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> list[str]:
    """Responses (text before ``<eos>``) to prompts of any lengths; greedy by default."""
    out: list[str | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(codec.length(p), []).append(i)
    was_training = model.training
    model.eval()
    for idx in by_length.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            ids = codec.encode_batch([prompts[i] for i in chunk])
            tokens, _ = sample_ids(
                model,
                ids,
                eos_id=codec.eos_id,
                pad_id=codec.pad_id,
                temperature=temperature,
                generator=generator,
            )
            for i, row in zip(chunk, tokens.tolist(), strict=True):
                out[i] = codec.decode(row)
    model.train(was_training)
    return [o or "" for o in out]


def accuracy(model: torch.nn.Module, codec: Codec, prompts: Sequence[str]) -> float:
    """Greedy exact-match accuracy under the task verifier."""
    if not prompts:
        raise ValueError("accuracy needs at least one prompt")
    responses = generate(model, codec, prompts)
    return sum(is_correct(p, r) for p, r in zip(prompts, responses, strict=True)) / len(prompts)


def sequence_logits(
    model: torch.nn.Module, prompt_ids: torch.Tensor, response_ids: torch.Tensor
) -> torch.Tensor:
    """Logits predicting each response token, shape (batch, T, vocab).

    ``prompt_ids``: (batch, P) equal-length prompts; ``response_ids``: (batch, T), padded after
    ``<eos>`` (the padding only feeds positions that callers mask out).
    """
    seq = torch.cat([prompt_ids, response_ids], dim=1)  # (batch, P + T)
    logits = model(input_ids=seq).logits  # (batch, P + T, vocab)
    p = prompt_ids.shape[1]
    return logits[:, p - 1 : -1, :].float()
