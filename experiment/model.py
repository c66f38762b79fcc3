"""The tiny GPT-2, its character-level tokenizer, sampling and ground-truth evaluation.

Everything is built locally from code: a `tokenizers` WordLevel model over single characters wrapped
in `PreTrainedTokenizerFast`, and a `GPT2LMHeadModel` from a `GPT2Config`; both are saved with
``save_pretrained`` so ``AutoTokenizer`` / ``AutoModelForCausalLM`` load a checkpoint folder with
``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from experiment.tasks import LETTER_ALPHABET, is_correct

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
VOCAB = (PAD, EOS, UNK, *"0123456789+=", *"B:>;", *LETTER_ALPHABET)
MAX_NEW_TOKENS = 4  # three sum digits + <eos>; two letters + <eos> fit too


@dataclass(frozen=True)
class ModelConfig:
    """Size of the tiny GPT-2; the defaults give about 0.4M parameters.

    Two layers rather than three: on a shared 2-core CPU a third layer made pretraining to 98 %
    addition accuracy take about twice as long.
    """

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 32

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over `VOCAB`, with ``<pad>`` and ``<eos>``."""
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_model(config: ModelConfig = ModelConfig(), *, seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 without dropout (on-policy log-probs must match sampling)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=VOCAB.index(EOS),
        eos_token_id=VOCAB.index(EOS),
        pad_token_id=VOCAB.index(PAD),
    )
    return GPT2LMHeadModel(cfg)


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
    """Fast character <-> id conversion consistent with the tokenizer's vocabulary."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        vocab = tokenizer.get_vocab()
        self.to_id = {t: i for t, i in vocab.items() if len(t) == 1}
        self.to_char = {i: t for t, i in self.to_id.items()}
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.vocab_size = len(vocab)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.to_id[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} of {text!r} is not in the vocabulary") from None

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Equal-length texts -> ids, shape (batch, len)."""
        lengths = {len(t) for t in texts}
        if len(lengths) != 1:
            raise ValueError(f"encode_batch needs equal-length texts, got lengths {sorted(lengths)}")
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)

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
        # The KV cache is passed positionally: transformers 5 calls it `cache`, 4.x `past_key_values`.
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        out = model(nxt[:, None], cache, use_cache=True)
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
        by_length.setdefault(len(p), []).append(i)
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
