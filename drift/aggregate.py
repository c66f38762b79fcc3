"""Pooling per-tensor drift rows into blocks, module kinds and a global summary.

A pure function of the rows: rows carry exact sums, so rows computed in different processes (one
job per shard) aggregate to exactly the single-pass result (sums use ``math.fsum``, which is
correctly rounded and independent of order). Pooled over a group G of tensors (parameter-count
weighted by construction):

    l2_distance          = sqrt(Σ_G ‖θ−θ₀‖²)
    relative_l2_distance = sqrt(Σ_G ‖θ−θ₀‖² / Σ_G ‖θ₀‖²)
    cosine_similarity    = Σ_G θ·θ₀ / sqrt(Σ_G ‖θ‖² · Σ_G ‖θ₀‖²)
    update_cosine_similarity = Σ_G (θ−θ_{t−1})·(θ_{t−1}−θ_{t−2}) / sqrt(Σ_G ‖θ−θ_{t−1}‖² · Σ_G ‖θ_{t−1}−θ_{t−2}‖²)
    changed_ratio        = Σ_G #changed / Σ_G numel (also per checkpoint dtype)
    normalized_spectral_shift = sqrt(Σ_G Σᵢ(σᵢ−σ₀ᵢ)² / Σ_G Σᵢσ₀ᵢ²); max_principal_angle_deg = max over G;
    principal_overlap_ratio = Σ|M₀∩M| / Σ|M₀|; principal_update_energy_ratio = Σ‖ΔW⊙M₀‖² / Σ‖ΔW‖².
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BLOCK_PATTERNS",
    "DEFAULT_MODULE_PATTERNS",
    "DriftStats",
    "DriftSummary",
    "SpectralDrift",
    "TensorDrift",
    "aggregate",
    "block_index",
    "module_kind",
]


@dataclass(frozen=True)
class SpectralDrift:
    """Spectral drift of one matrix; the sums make pooling over matrices exact (see drift.aggregate)."""

    k: int
    sigma_shift_sq: float  # Σᵢ (σᵢ − σ₀ᵢ)²
    sigma_base_sq: float  # Σᵢ σ₀ᵢ²
    max_principal_angle_deg: float
    mask_size: int  # |M₀|
    mask_overlap: int  # |M₀ ∩ M|
    masked_delta_sq: float  # ‖ΔW ⊙ M₀‖²
    delta_sq: float  # ‖ΔW‖²
    normalized_spectral_shift: float | None  # None when σ(W₀) = 0
    principal_overlap_ratio: float
    principal_update_energy_ratio: float | None  # None when ΔW = 0


@dataclass(frozen=True)
class TensorDrift:
    """Drift of one tensor. ``status``: "ok" | "missing" (in base only) | "extra" (in checkpoint only) |
    "shape_mismatch" | "alias" (tied to ``alias_of``; counted there). Sums are exact building blocks
    for ``aggregate``; derived fields are None where undefined (zero norms, no previous checkpoints).
    ``spectral_status``: "ok" | "off" | "not_matrix" | "skipped_size" | "nonfinite" | "not_compared"."""

    name: str
    status: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    dtype: str
    base_dtype: str
    numel: int = 0
    alias_of: str | None = None
    lora: bool = False
    sum_sq_delta: float = 0.0
    sum_sq_base: float = 0.0
    sum_sq: float = 0.0
    dot_base: float = 0.0
    changed: int = 0
    nan_count: int = 0
    inf_count: int = 0
    sum_sq_step: float | None = None
    sum_sq_prev_step: float | None = None
    dot_steps: float | None = None
    changed_step: int | None = None
    l2_distance: float = 0.0
    relative_l2_distance: float | None = None
    cosine_similarity: float | None = None
    step_l2_distance: float | None = None
    update_cosine_similarity: float | None = None
    spectral_status: str = "not_compared"
    spectral: SpectralDrift | None = None

DEFAULT_BLOCK_PATTERNS: tuple[str, ...] = (
    r"(?:^|\.)model\.layers\.(\d+)\.",
    r"(?:^|\.)transformer\.h\.(\d+)\.",
    r"(?:^|\.)gpt_neox\.layers\.(\d+)\.",
    r"(?:^|\.)model\.decoder\.layers\.(\d+)\.",
    r"(?:^|\.)(?:layers|layer|blocks|h)\.(\d+)\.",
)
# (kind, regex) tried in order on the tensor name; the first match wins, else "other".
DEFAULT_MODULE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("norm", r"norm|(?:^|\.)ln_?[a-z0-9]*\."),
    ("head", r"(?:^|\.)(?:lm_head|embed_out)\.|^(?:output|score|classifier)\."),
    ("embedding", r"embed|(?:^|\.)(?:wte|wpe)\.|word_embeddings|position_embeddings"),
    ("attention", r"attn|attention|(?:^|\.)[qkvo]_proj\.|query_key_value|(?:^|\.)(?:query|key|value)\."),
    (
        "mlp",
        (
            r"mlp|feed_forward|ffn|moe|(?:^|\.)fc_?(?:\d|in|out)?\.|(?:gate|up|down)_proj|dense_h_to_4h"
            r"|dense_4h_to_h|c_fc|(?:^|\.)w[123]\."
        ),
    ),
)
_FIRST = 10  # mismatch lists name this many, then count


@dataclass(frozen=True)
class DriftStats:
    """Pooled drift of a group of tensors (see module docstring for the formulas)."""

    n_tensors: int
    numel: int
    sum_sq_delta: float
    sum_sq_base: float
    sum_sq: float
    dot_base: float
    changed: int
    nan_count: int
    inf_count: int
    changed_by_dtype: dict[str, int]
    numel_by_dtype: dict[str, int]
    l2_distance: float
    relative_l2_distance: float | None
    cosine_similarity: float | None
    changed_ratio: float | None
    changed_ratio_by_dtype: dict[str, float]
    n_step_tensors: int
    step_l2_distance: float | None
    update_cosine_similarity: float | None
    n_spectral: int
    normalized_spectral_shift: float | None
    max_principal_angle_deg: float | None
    principal_overlap_ratio: float | None
    principal_update_energy_ratio: float | None


@dataclass(frozen=True)
class DriftSummary:
    """Global, per-block (layer index) and per-module-kind drift, plus what could not be compared."""

    overall: DriftStats
    blocks: dict[int, DriftStats]
    modules: dict[str, DriftStats]
    n_missing: int
    missing: tuple[str, ...]
    n_extra: int
    extra: tuple[str, ...]
    n_shape_mismatch: int
    shape_mismatch: tuple[str, ...]
    n_dtype_changed: int
    dtype_changed: tuple[str, ...]
    aliases: tuple[str, ...]
    n_nonfinite_tensors: int
    nonfinite_tensors: tuple[str, ...]
    n_spectral_skipped: int
    spectral_skipped: tuple[str, ...]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _cosine(dot: float, sq1: float, sq2: float) -> float | None:
    if not (sq1 > 0 and sq2 > 0 and math.isfinite(dot)):
        return None
    return max(-1.0, min(1.0, dot / math.sqrt(sq1 * sq2)))


def stats(rows: Iterable[TensorDrift]) -> DriftStats:
    """Pool rows with status "ok" (others are ignored)."""
    rows = [r for r in rows if r.status == "ok"]
    fs = lambda values: math.fsum(values)
    sq_d, sq_0, sq_1, dot = (
        fs(getattr(r, f) for r in rows) for f in ("sum_sq_delta", "sum_sq_base", "sum_sq", "dot_base")
    )
    changed_by, numel_by = {}, {}
    for r in rows:
        changed_by[r.dtype] = changed_by.get(r.dtype, 0) + r.changed
        numel_by[r.dtype] = numel_by.get(r.dtype, 0) + r.numel
    numel = sum(r.numel for r in rows)
    step = [r for r in rows if r.sum_sq_step is not None]
    both = [r for r in step if r.dot_steps is not None]
    sq_u = fs(r.sum_sq_step for r in both)
    spec = [r.spectral for r in rows if r.spectral_status == "ok"]
    return DriftStats(
        n_tensors=len(rows),
        numel=numel,
        sum_sq_delta=sq_d,
        sum_sq_base=sq_0,
        sum_sq=sq_1,
        dot_base=dot,
        changed=sum(changed_by.values()),
        nan_count=sum(r.nan_count for r in rows),
        inf_count=sum(r.inf_count for r in rows),
        changed_by_dtype=changed_by,
        numel_by_dtype=numel_by,
        l2_distance=math.sqrt(sq_d),
        relative_l2_distance=math.sqrt(sq_d / sq_0) if sq_0 > 0 else (0.0 if sq_d == 0 else None),
        cosine_similarity=_cosine(dot, sq_0, sq_1),
        changed_ratio=_ratio(sum(changed_by.values()), numel),
        changed_ratio_by_dtype={k: changed_by[k] / numel_by[k] for k in sorted(numel_by) if numel_by[k]},
        n_step_tensors=len(step),
        step_l2_distance=math.sqrt(fs(r.sum_sq_step for r in step)) if step else None,
        update_cosine_similarity=_cosine(
            fs(r.dot_steps for r in both), sq_u, fs(r.sum_sq_prev_step for r in both)
        ),
        n_spectral=len(spec),
        normalized_spectral_shift=(
            math.sqrt(fs(s.sigma_shift_sq for s in spec) / fs(s.sigma_base_sq for s in spec))
            if spec and fs(s.sigma_base_sq for s in spec) > 0
            else None
        ),
        max_principal_angle_deg=max((s.max_principal_angle_deg for s in spec), default=None),
        principal_overlap_ratio=_ratio(sum(s.mask_overlap for s in spec), sum(s.mask_size for s in spec)),
        principal_update_energy_ratio=_ratio(
            fs(s.masked_delta_sq for s in spec), fs(s.delta_sq for s in spec)
        ),
    )


def block_index(name: str, patterns: Sequence[str] = DEFAULT_BLOCK_PATTERNS) -> int | None:
    """Layer index from the first pattern whose group 1 matches ``name``, else None."""
    for pattern in patterns:
        m = re.search(pattern, name)
        if m:
            return int(m.group(1))
    return None


def module_kind(name: str, patterns: Sequence[tuple[str, str]] = DEFAULT_MODULE_PATTERNS) -> str:
    """ "attention" | "mlp" | "embedding" | "norm" | "head" | "other" (first matching pattern)."""
    lowered = name.lower()
    for kind, pattern in patterns:
        if re.search(pattern, lowered):
            return kind
    return "other"


def _first(items: list[str]) -> tuple[str, ...]:
    return tuple(sorted(items)[:_FIRST])


def aggregate(
    rows: Iterable[TensorDrift],
    *,
    block_patterns: Sequence[str] | None = None,
    module_patterns: Sequence[tuple[str, str]] | None = None,
) -> DriftSummary:
    """Pool per-tensor rows (from one or many ``tensor_rows`` calls) into a DriftSummary.

    Rows are de-duplicated by name (a name computed twice must not count twice); aliases are
    listed, never counted.
    """
    by_name = {r.name: r for r in rows}
    rows = [by_name[n] for n in sorted(by_name)]
    block_patterns = tuple(block_patterns or DEFAULT_BLOCK_PATTERNS)
    module_patterns = tuple(module_patterns or DEFAULT_MODULE_PATTERNS)
    ok = [r for r in rows if r.status == "ok"]
    blocks: dict[int, list[TensorDrift]] = {}
    modules: dict[str, list[TensorDrift]] = {}
    for r in ok:
        b = block_index(r.name, block_patterns)
        if b is not None:
            blocks.setdefault(b, []).append(r)
        modules.setdefault(module_kind(r.name, module_patterns), []).append(r)
    pick = lambda status: [r for r in rows if r.status == status]
    shape = [f"{r.name}: {list(r.base_shape)} -> {list(r.shape)}" for r in pick("shape_mismatch")]
    dtype = [f"{r.name}: {r.base_dtype} -> {r.dtype}" for r in ok if r.dtype != r.base_dtype]
    nonfinite = [r.name for r in ok if r.nan_count or r.inf_count]
    skipped = [
        f"{r.name} ({r.spectral_status})" for r in ok if r.spectral_status in ("skipped_size", "nonfinite")
    ]
    return DriftSummary(
        overall=stats(ok),
        blocks={b: stats(blocks[b]) for b in sorted(blocks)},
        modules={k: stats(modules[k]) for k in sorted(modules)},
        n_missing=len(pick("missing")),
        missing=_first([r.name for r in pick("missing")]),
        n_extra=len(pick("extra")),
        extra=_first([r.name for r in pick("extra")]),
        n_shape_mismatch=len(shape),
        shape_mismatch=_first(shape),
        n_dtype_changed=len(dtype),
        dtype_changed=_first(dtype),
        aliases=tuple(f"{r.name} -> {r.alias_of}" for r in pick("alias")),
        n_nonfinite_tensors=len(nonfinite),
        nonfinite_tensors=_first(nonfinite),
        n_spectral_skipped=len(skipped),
        spectral_skipped=_first(skipped),
    )
