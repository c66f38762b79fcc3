"""Parameter-space drift of a checkpoint θ against its base θ₀, one row per tensor.

Per tensor (flattened, float64 accumulation, differences formed element-wise):

    sum_sq_delta = ‖θ−θ₀‖²,  sum_sq_base = ‖θ₀‖²,  sum_sq = ‖θ‖²,  dot_base = θ·θ₀,
    l2_distance = ‖θ−θ₀‖,  relative_l2_distance = ‖θ−θ₀‖/‖θ₀‖,  cosine_similarity = θ·θ₀/(‖θ‖‖θ₀‖),
    changed = #{i: θᵢ ≠ θ₀ᵢ} (in the stored dtype: bf16 rounds micro-updates away),
    with ``previous`` θ_{t−1} and ``before_previous`` θ_{t−2}:
    sum_sq_step = ‖θ−θ_{t−1}‖², sum_sq_prev_step = ‖θ_{t−1}−θ_{t−2}‖², dot_steps = (θ−θ_{t−1})·(θ_{t−1}−θ_{t−2}),
    update_cosine_similarity = dot_steps / sqrt(sum_sq_step · sum_sq_prev_step).

Non-finite elements are counted (``nan_count``, ``inf_count`` in θ) and left out of the sums.
A LoRA adapter as checkpoint (or previous) means θ = W₀ + s·BA; its sums come from the low-rank
algebra in ``drift.lora`` (exact in float64), its counts from merged rows in the base dtype.

Public API: ``list_tensors``, ``tensor_rows`` (rows for any subset of names; safe to split across
processes), ``aggregate`` (pure, in ``drift.aggregate``), ``compare`` (both), ``shard_groups``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from drift import _kernels as K
from drift.aggregate import DriftSummary, SpectralDrift, TensorDrift, aggregate
from drift.checkpoint_io import Checkpoint, CheckpointError, TensorInfo
from drift.checkpoints import list_tensors, open_checkpoint
from drift.confined import Roots
from drift.lora import LoraAdapter, LowRankDelta
from drift.remote import RemotePath, is_remote
from drift.spectral import SpectralOptions, cache_path, prepare_base, spectral_drift
from drift.streams import DenseStream, LowRankStream, fast_sums, float64_sums, lora_sums

__all__ = [
    "CheckpointError",
    "DriftReport",
    "DriftSummary",
    "SpectralOptions",
    "TensorDrift",
    "aggregate",
    "compare",
    "list_tensors",
    "prepare_spectral_base",
    "shard_groups",
    "spectral_base_groups",
    "tensor_rows",
]

Source = str | os.PathLike | Checkpoint


@dataclass(frozen=True)
class DriftReport:
    rows: tuple[TensorDrift, ...]
    summary: DriftSummary


class _View:
    """A source's effective tensors, named like the base (a LoRA adapter resolved against it)."""

    def __init__(self, ckpt: Checkpoint, base: Checkpoint) -> None:
        self.ckpt, self.base = ckpt, base
        self.deltas: dict[str, LowRankDelta] = {}
        self.replaced: dict[str, str] = {}
        self.infos: dict[str, TensorInfo] = ckpt.infos
        if isinstance(ckpt, LoraAdapter):
            self.deltas, self.replaced, unmatched = ckpt.resolve(base)
            self.infos = dict(base.infos)
            for base_name, key in self.replaced.items():
                info = ckpt.infos[key]
                self.infos[base_name] = TensorInfo(base_name, info.shape, info.dtype, info.file)
            for key in unmatched:
                self.infos[key] = ckpt.infos[key]

    def stream(self, name: str, base_stream: DenseStream | None):
        info = self.infos.get(name)
        if info is None:
            return None
        if name in self.deltas:
            return LowRankStream(base_stream, self.deltas[name])
        if isinstance(self.ckpt, LoraAdapter) and name not in self.replaced and name in self.base.infos:
            return base_stream
        key = self.replaced.get(name, name)
        return DenseStream(self.ckpt.array(key), self.ckpt.infos[key].dtype)


def _open(source: Source | None, opened: list[Checkpoint], roots: Roots = None) -> Checkpoint | None:
    if source is None or isinstance(source, Checkpoint):
        return source
    ckpt = open_checkpoint(source, roots=roots)
    opened.append(ckpt)
    return ckpt


def _row_names(base: Checkpoint, view: _View) -> list[str]:
    names = list(base.infos)
    return names + [n for n in view.infos if n not in base.infos]


def _spectral_applies(shape: tuple[int, ...], options: SpectralOptions) -> str | None:
    """None when a tensor of ``shape`` gets spectral drift, else the status that says why not."""
    if len(shape) != 2 or min(shape) == 0:
        return "not_matrix"
    if shape[0] * shape[1] > options.max_elements:
        return "skipped_size"
    return None


def _base_cache_file(name: str, base_info: TensorInfo, options: SpectralOptions, cache_dir) -> Path | None:
    """Where the base's spectral results for tensor ``name`` are cached: keyed by the file's identity
    (path, size and mtime; for object storage its version), the tensor and the options."""
    if is_remote(base_info.file):  # object storage: its version (ETag, generation) changes with the object
        remote = RemotePath(base_info.file)
        meta = remote.info()
        identity = {"file": base_info.file, "size": meta.get("size"), "etag": remote.version(meta)}
    else:
        st = os.stat(base_info.file)
        identity = {"file": os.path.abspath(base_info.file), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    key = {**identity, "tensor": base_info.alias_of or name, "dtype": base_info.dtype}
    return cache_path(cache_dir, key, options)


def _spectral(name, base_info, a, b, sums, finite, options, cache_dir) -> tuple[str, SpectralDrift | None]:
    skipped = _spectral_applies(tuple(a.shape), options)
    if skipped:
        return skipped, None
    if not finite:
        return "nonfinite", None
    result = spectral_drift(
        a, b, options=options, cache_file=_base_cache_file(name, base_info, options, cache_dir),
        delta_sq=float(sums[K.DD]),
    )
    return "ok", result


def _all_finite(a: DenseStream, rows_per_block: int = 1 << 12) -> bool:
    return all(np.isfinite(a.rows32(r, min(r + rows_per_block, a.shape2d[0]))).all()
               for r in range(0, a.shape2d[0], rows_per_block))


def spectral_base_groups(
    base: Source, *, options: SpectralOptions | None = None, roots: Roots = None
) -> list[list[TensorInfo]]:
    """The base's matrices that get a spectral pass, grouped by the file holding them (in file order),
    so that ``prepare_spectral_base`` can be split into parts a worker each, like the parameter drift."""
    options = options or SpectralOptions()
    groups: dict[str, list[TensorInfo]] = {}
    for info in list_tensors(base, roots=roots):
        if not info.alias_of and _spectral_applies(tuple(info.shape), options) is None:
            groups.setdefault(info.file, []).append(info)
    return [groups[f] for f in sorted(groups)]


def prepare_spectral_base(
    base: Source,
    *,
    options: SpectralOptions | None = None,
    cache_dir: str | os.PathLike,
    names: Iterable[str] | None = None,
    roots: Roots = None,
) -> int:
    """Compute the base's spectral results for every matrix ``tensor_rows`` would compare (or for those
    of ``names``), into ``cache_dir``, so that a checkpoint's parameter drift does only its own part.
    Tensors already cached or with non-finite values are left alone. Returns the number computed."""
    options = options or SpectralOptions()
    wanted = None if names is None else set(names)
    opened: list[Checkpoint] = []
    computed = 0
    try:
        b = _open(base, opened, roots)
        if b is None or b.kind == "lora":
            raise ValueError(f"base must be a full model, got {base}")
        for name, info in b.infos.items():
            if wanted is not None and name not in wanted:
                continue
            if info.alias_of or _spectral_applies(tuple(info.shape), options):
                continue
            a = DenseStream(b.array(name), info.dtype)
            if not _all_finite(a):
                continue  # a checkpoint's row reports "nonfinite" and never reads the cache
            computed += prepare_base(a, options=options, cache_file=_base_cache_file(name, info, options, cache_dir))
        return computed
    finally:
        for ckpt_ in opened:
            ckpt_.close()


def _row(name, base, view, prev_views, spectral, options, cache_dir, pool) -> TensorDrift:
    b_info, c_info = base.infos.get(name), view.infos.get(name)
    info = b_info or c_info
    common = {
        "name": name,
        "shape": (c_info or info).shape,
        "base_shape": (b_info or info).shape,
        "dtype": c_info.dtype if c_info else "",
        "base_dtype": b_info.dtype if b_info else "",
    }
    alias = [i.alias_of for i in (b_info, c_info) if i is not None and i.alias_of]
    if alias and all(i is None or i.alias_of for i in (b_info, c_info)):
        return TensorDrift(status="alias", alias_of=alias[0], **common)
    if b_info is None or c_info is None:
        return TensorDrift(status="extra" if b_info is None else "missing", **common)
    if b_info.shape != c_info.shape:
        return TensorDrift(status="shape_mismatch", **common)
    a = DenseStream(base.array(name), b_info.dtype)
    streams = [a, view.stream(name, a)]
    for pv in prev_views:
        s = pv.stream(name, a) if pv is not None else None
        if s is None or s.shape != a.shape:
            break
        streams.append(s)
    n_prev = len(streams) - 2
    if n_prev == 1:
        streams.append(streams[2])  # θ_{t−2} := θ_{t−1}: the step sums stay right, VV/UV are dropped
    is_lora = any(isinstance(s, LowRankStream) for s in streams)
    nan = inf = 0
    finite = True
    sums = fast_sums(streams, pool)
    if sums is None and is_lora and all(isinstance(s, LowRankStream) or s is a for s in streams):
        sums = lora_sums(streams, pool)
        if sums is not None:  # counts need element values: merged rows, in the base dtype
            counted, nan, inf, _ = float64_sums(streams, pool, counts_only=True)
            sums[K.CHANGED], sums[K.STEP_CHANGED] = counted[K.CHANGED], counted[K.STEP_CHANGED]
            finite = not (nan or inf)
    if sums is None:
        sums, nan, inf, finite = float64_sums(streams, pool)
    row = _derive(common, sums, a.flat.size, nan, inf, n_prev, is_lora)
    if not spectral:
        return row
    status, result = _spectral(name, b_info, a, streams[1], sums, finite, options, cache_dir)
    return replace(row, spectral_status=status, spectral=result)


def _derive(common, sums, numel, nan, inf, n_prev, is_lora) -> TensorDrift:
    dd, aa, bb, ab = (float(sums[i]) for i in (K.DD, K.AA, K.BB, K.AB))
    cos = lambda x, p, q: max(-1.0, min(1.0, x / math.sqrt(p * q))) if p > 0 and q > 0 else None
    step = {}
    if n_prev >= 1:
        uu = float(sums[K.UU])
        step = {
            "sum_sq_step": uu,
            "step_l2_distance": math.sqrt(uu),
            "changed_step": int(sums[K.STEP_CHANGED]),
        }
    if n_prev == 2:
        vv, uv = float(sums[K.VV]), float(sums[K.UV])
        step |= {"sum_sq_prev_step": vv, "dot_steps": uv, "update_cosine_similarity": cos(uv, uu, vv)}
    return TensorDrift(
        status="ok",
        numel=numel,
        lora=is_lora,
        sum_sq_delta=dd,
        sum_sq_base=aa,
        sum_sq=bb,
        dot_base=ab,
        changed=int(sums[K.CHANGED]),
        nan_count=nan,
        inf_count=inf,
        l2_distance=math.sqrt(dd),
        relative_l2_distance=math.sqrt(dd / aa) if aa > 0 else (0.0 if dd == 0 else None),
        cosine_similarity=cos(ab, aa, bb),
        spectral_status="off",
        **step,
        **common,
    )


def _default_threads() -> int:
    """torch's intra-op thread count (the cores, unless the caller's process was given a share), at most 8."""
    return max(1, min(8, torch.get_num_threads()))


def tensor_rows(
    base: Source,
    ckpt: Source,
    *,
    names: Iterable[str] | None = None,
    previous: Source | None = None,
    before_previous: Source | None = None,
    spectral: bool = True,
    spectral_options: SpectralOptions | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    threads: int | None = None,
    roots: Roots = None,
) -> list[TensorDrift]:
    """One TensorDrift per tensor name of ``base`` ∪ ``ckpt`` (or of ``names``), in storage order.

    ``base``: a full model (folder or file); ``ckpt``/``previous``/``before_previous``: full models or
    LoRA adapters of ``base``. ``names`` restricts the rows (unknown names raise ValueError), so a
    worker per shard can compute its part; ``aggregate`` then pools any mix of rows. ``spectral``
    adds top-k spectral drift for 2-D tensors (``spectral_options``; base results cached in
    ``cache_dir``). ``progress(done, total, name)`` is called after each tensor. ``roots`` confines
    every file opened to those folders (``drift.confined``).
    Raises CheckpointError for unreadable files; mismatches become rows, not errors.
    """
    options = spectral_options or SpectralOptions()
    threads = threads or _default_threads()
    opened: list[Checkpoint] = []
    try:
        b, c = _open(base, opened, roots), _open(ckpt, opened, roots)
        if b.kind == "lora":
            raise ValueError(f"base must be a full model, got the LoRA adapter {b.path}")
        view = _View(c, b)
        prev = [
            _View(p, b) if p is not None else None
            for p in (_open(previous, opened, roots), _open(before_previous, opened, roots))
        ]
        if prev[0] is None:
            prev = []
        all_names = _row_names(b, view)
        if names is not None:
            wanted = list(dict.fromkeys(names))
            unknown = sorted(set(wanted) - set(all_names))
            if unknown:
                raise ValueError(f"names not in base or checkpoint: {unknown[:10]} ({len(unknown)} in all)")
            keep = set(wanted)
            all_names = [n for n in all_names if n in keep]
        rows = []
        with ThreadPoolExecutor(threads) if threads > 1 else _NoPool() as pool:
            for i, name in enumerate(all_names):
                if i + 1 < len(all_names):  # the next tensor's pages are read while this one is computed
                    for source in (b, c, *(v.ckpt for v in prev if v is not None)):
                        source.prefetch(all_names[i + 1])
                rows.append(
                    _row(name, b, view, prev, spectral, options, cache_dir, pool if threads > 1 else None)
                )
                if progress is not None:
                    progress(i + 1, len(all_names), name)
        return rows
    finally:
        for ckpt_ in opened:
            ckpt_.close()


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def compare(
    base: Source,
    ckpt: Source,
    *,
    previous: Source | None = None,
    before_previous: Source | None = None,
    spectral: bool = True,
    spectral_options: SpectralOptions | None = None,
    cache_dir: str | os.PathLike | None = None,
    block_patterns: Sequence[str] | None = None,
    module_patterns: Sequence[tuple[str, str]] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    threads: int | None = None,
) -> DriftReport:
    """``tensor_rows`` over all tensors, then ``aggregate``."""
    rows = tensor_rows(
        base,
        ckpt,
        previous=previous,
        before_previous=before_previous,
        spectral=spectral,
        spectral_options=spectral_options,
        cache_dir=cache_dir,
        progress=progress,
        threads=threads,
    )
    summary = aggregate(rows, block_patterns=block_patterns, module_patterns=module_patterns)
    return DriftReport(rows=tuple(rows), summary=summary)


def shard_groups(base: Source, ckpt: Source, *, roots: Roots = None) -> list[list[str]]:
    """Row names grouped by the base file holding them (one job per shard); names only in the
    checkpoint form a last group. Together the groups cover every row of ``tensor_rows`` once."""
    opened: list[Checkpoint] = []
    try:
        b, c = _open(base, opened, roots), _open(ckpt, opened, roots)
        groups: dict[str, list[str]] = {}
        for name in _row_names(b, _View(c, b)):
            info = b.infos.get(name)
            groups.setdefault(info.file if info else "", []).append(name)
        return [groups[f] for f in sorted(groups, key=lambda f: (f == "", f))]
    finally:
        for ckpt_ in opened:
            ckpt_.close()
