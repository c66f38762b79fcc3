"""PEFT LoRA adapters as low-rank deltas on a base checkpoint.

A LoRA module adds ``ΔW = s · B A`` to a base weight, with ``A: (r, in)``, ``B: (out, r)`` and
``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``). Every delta is kept in the base file's
*stored* orientation as ``ΔW = s · X Yᵀ`` with ``X: (m, r)``, ``Y: (n, r)`` for a stored ``(m, n)`` weight:

* ``nn.Linear`` (stored ``(out, in)``):            ``X = B``,  ``Y = Aᵀ``;
* GPT-2 ``Conv1D`` (``fan_in_fan_out``, ``(in, out)``): ``X = Aᵀ``, ``Y = B``  (ΔW = (BA)ᵀ);
* ``nn.Embedding`` (``lora_embedding_A: (r, vocab)``, ``lora_embedding_B: (dim, r)``): ``X = Aᵀ``, ``Y = B``.

The orientation is read from the shapes, falling back to ``fan_in_fan_out`` for square weights.
Norms and inner products then never need the dense ``(m, n)`` delta (``lowrank_inner``):

    ⟨s₁X₁Y₁ᵀ, s₂X₂Y₂ᵀ⟩_F = s₁s₂ · trace((X₁ᵀX₂)(Y₂ᵀY₁)),   ‖sXYᵀ‖_F² = s² · trace((XᵀX)(YᵀY)),
    ⟨W₀, sXYᵀ⟩_F = s · Σᵢⱼ (W₀Y)ᵢⱼ Xᵢⱼ            (one pass over W₀'s rows).

Keys follow peft's saved naming: ``base_model.model.<module>.lora_A.weight`` maps to the base tensor
``<module>.weight``; other saved tensors (``modules_to_save``) replace base tensors outright.
Reference: Hu et al. 2021, "LoRA" (arXiv:2106.09685); peft ``LoraLayer.get_delta_weight``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from drift.checkpoint_io import Checkpoint, CheckpointError, to_float64
from drift.confined import Roots, read_json
from drift.remote import as_location

__all__ = ["LoraAdapter", "LowRankDelta", "lowrank_inner", "open_adapter"]

_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$"
)


@dataclass(frozen=True)
class LowRankDelta:
    """``ΔW = scale · x @ y.T`` in the base tensor's stored orientation; x: (m, r), y: (n, r), float64."""

    module: str
    x: np.ndarray
    y: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return self.x.shape[1]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Dense rows ``ΔW[start:stop]``, shape (stop - start, n), float64."""
        return self.scale * (self.x[start:stop] @ self.y.T)


def lowrank_inner(d1: LowRankDelta, d2: LowRankDelta) -> float:
    """⟨s₁X₁Y₁ᵀ, s₂X₂Y₂ᵀ⟩_F = s₁s₂·trace((X₁ᵀX₂)(Y₂ᵀY₁)), in float64, O((m+n)r₁r₂)."""
    return float(d1.scale * d2.scale * np.einsum("ij,ji->", d1.x.T @ d2.x, d2.y.T @ d1.y))


def _alpha_for(module: str, config: dict) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():  # peft's get_pattern_key
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(config.get("lora_alpha", 8))


class LoraAdapter(Checkpoint):
    """A PEFT LoRA adapter folder; ``resolve(base)`` pairs its modules with base tensors."""

    def resolve(self, base: Checkpoint) -> tuple[dict[str, LowRankDelta], dict[str, str], list[str]]:
        """Match adapter tensors to ``base`` names.

        Returns ``(deltas, replaced, unmatched)``: base name -> LowRankDelta; base name -> adapter tensor
        name for tensors stored in full (``modules_to_save``); adapter names with no base tensor.
        """
        base_names = set(base.canonical_names())
        parts: dict[str, dict[str, str]] = {}
        replaced, unmatched = {}, []
        for key in self.infos:
            stripped = key.removeprefix(_PREFIX)
            m = _LORA_KEY.match(stripped)
            if m:
                parts.setdefault(m["module"], {})[m["part"].split(".")[0].replace("embedding_", "")] = key
                continue
            target = _match(stripped.replace(".modules_to_save", ""), base_names)
            (replaced.__setitem__(target, key) if target else unmatched.append(key))
        deltas = {}
        for module, keys in parts.items():
            target = _match(f"{module}.weight", base_names)
            if target is None or set(keys) != {"lora_A", "lora_B"}:
                unmatched.extend(keys.values())
                continue
            deltas[target] = self._delta(module, keys, base.infos[target])
        return deltas, replaced, unmatched

    def _delta(self, module: str, keys: dict[str, str], target) -> LowRankDelta:
        a = to_float64(self.array(keys["lora_A"]), self.infos[keys["lora_A"]].dtype)  # (r, in)
        b = to_float64(self.array(keys["lora_B"]), self.infos[keys["lora_B"]].dtype)  # (out, r)
        embedding = keys["lora_A"].endswith("lora_embedding_A")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or len(target.shape) != 2:
            raise CheckpointError(
                f"{self.path}: LoRA factors of {module} have shapes {a.shape} and {b.shape}, which do not "
                f"form a delta for base tensor {target.name} {list(target.shape)}"
            )
        r = a.shape[0]
        alpha = _alpha_for(module, self.config)
        scale = alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r
        plain, transposed = (b.shape[0], a.shape[1]), (a.shape[1], b.shape[0])
        if embedding:
            plain = None  # peft's Embedding stores (B A)ᵀ
        stored = tuple(target.shape)
        if stored == plain and (stored != transposed or not self.config.get("fan_in_fan_out")):
            return LowRankDelta(module, b, a.T.copy(), scale)
        if stored == transposed:
            return LowRankDelta(module, a.T.copy(), b, scale)
        raise CheckpointError(
            f"{self.path}: LoRA delta of {module} is {plain or transposed}, base tensor {target.name} is "
            f"{list(stored)}; is this adapter for a different base model?"
        )


def _match(name: str, base_names: set[str]) -> str | None:
    """Exact name, else the unique base name ending in ``.name``, else drop leading components."""
    if name in base_names:
        return name
    hits = [b for b in base_names if b.endswith("." + name)]
    if len(hits) == 1:
        return hits[0]
    _, _, rest = name.partition(".")
    return _match(rest, base_names) if rest and "." in rest else None


def open_adapter(path: str | os.PathLike, *, roots: Roots = None) -> LoraAdapter:
    """Open a PEFT LoRA adapter folder; refuses adapter types whose delta is not ``s·B·A``.
    With ``roots``, its files are opened confined to them (``drift.confined``)."""
    path = as_location(path)
    config = read_json(path / "adapter_config.json", roots)
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA" or config.get("use_dora") or config.get("lora_bias"):
        what = "DoRA" if config.get("use_dora") else "lora_bias" if config.get("lora_bias") else peft_type
        raise CheckpointError(
            f"{path}: {what} adapters are not supported (only plain LoRA, ΔW = s·B·A); merge the adapter "
            "(peft merge_and_unload + save_pretrained) and compare the merged model instead"
        )
    adapter = LoraAdapter(path, "lora", config, roots=roots)
    if (path / "adapter_model.safetensors").is_file():
        adapter.add_safetensors(path / "adapter_model.safetensors")
    elif (path / "adapter_model.bin").is_file():
        adapter.add_torch(path / "adapter_model.bin")
    else:
        raise CheckpointError(f"{path}: adapter_config.json found but no adapter_model.safetensors or .bin")
    return adapter

