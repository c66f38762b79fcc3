"""Effective tensors of a checkpoint, read in row blocks without materializing the whole tensor.

* ``DenseStream``: a stored tensor (raw, memory-mapped data of a ``Checkpoint``);
* ``LowRankStream``: a base tensor plus a LoRA delta, ``θ = W₀ + s·X Yᵀ`` (see ``drift.lora``).

Every stream is seen as a 2-D ``(rows, cols)`` matrix: ``cols = shape[-1]`` for tensors of two or more
dimensions, ``cols = 1`` for vectors and scalars, so the same row-block loop covers all tensors.
"""

from __future__ import annotations

import warnings

import numpy as np

from drift import _kernels as K
from drift.checkpoint_io import to_float64
from drift.lora import LowRankDelta, lowrank_inner

__all__ = ["DenseStream", "LowRankStream", "fast_sums", "float64_sums", "lora_sums", "view2d"]

_ROWS = 1 << 18  # elements per block on the float64 paths


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (read-only, memory-mapped uint16) -> float32, converted by torch (fast)."""
    import torch

    with warnings.catch_warnings():  # read-only input is fine: torch only reads it here
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    return src.to(torch.float32).numpy()


def view2d(shape: tuple[int, ...]) -> tuple[int, int]:
    numel = int(np.prod(shape, dtype=np.int64))
    cols = shape[-1] if len(shape) >= 2 else 1
    return (numel // cols if cols else 0, cols)


class DenseStream:
    """A stored tensor; ``raw`` is its storage as returned by ``Checkpoint.array``."""

    def __init__(self, raw: np.ndarray, dtype: str) -> None:
        self.raw, self.dtype, self.shape = raw, dtype, tuple(raw.shape)
        self.shape2d = view2d(self.shape)
        self.flat = raw.reshape(-1)

    def rows64(self, r0: int, r1: int) -> np.ndarray:
        c = self.shape2d[1]
        return to_float64(self.flat[r0 * c : r1 * c], self.dtype).reshape(r1 - r0, c)

    def rows32(self, r0: int, r1: int) -> np.ndarray:
        c = self.shape2d[1]
        part = self.flat[r0 * c : r1 * c]
        if self.dtype == "bfloat16":
            out = _bf16_to_float32(part)
        elif self.dtype == "float32":
            out = np.array(part)
        else:
            out = to_float64(part, self.dtype).astype(np.float32)
        return out.reshape(r1 - r0, c)

    def compare64(self, r0: int, r1: int) -> np.ndarray:
        """Values as stored (what an element-wise 'changed' test sees)."""
        return self.rows64(r0, r1)

    def gather64(self, flat_idx: np.ndarray) -> np.ndarray:
        return to_float64(self.flat[flat_idx], self.dtype)


class LowRankStream:
    """``θ = W₀ + s·X Yᵀ`` on a 2-D base tensor; stored as the base's dtype once merged."""

    def __init__(self, base: DenseStream, delta: LowRankDelta) -> None:
        self.base, self.delta = base, delta
        self.dtype, self.shape, self.shape2d = base.dtype, base.shape, base.shape2d

    def rows64(self, r0: int, r1: int) -> np.ndarray:
        return self.base.rows64(r0, r1) + self.delta.rows(r0, r1)

    def rows32(self, r0: int, r1: int) -> np.ndarray:
        return self.rows64(r0, r1).astype(np.float32)

    def compare64(self, r0: int, r1: int) -> np.ndarray:
        """The merged rows rounded to the base dtype, as ``merge_and_unload`` would store them."""
        import torch

        merged = torch.from_numpy(self.rows64(r0, r1)).to(getattr(torch, self.dtype))
        return merged.to(torch.float64).numpy()

    def gather64(self, flat_idx: np.ndarray) -> np.ndarray:
        i, j = np.divmod(flat_idx, self.shape2d[1])
        d = self.delta
        return self.base.gather64(flat_idx) + d.scale * np.einsum("ir,ir->i", d.x[i], d.y[j])


def fast_sums(streams, pool) -> np.ndarray | None:
    """SUMS from the JIT kernels when every stream is stored data of one fast dtype and all is finite."""
    dense = all(isinstance(s, DenseStream) for s in streams)
    if not (dense and K.fast_path_ok([s.dtype for s in streams])):
        return None
    sums = K.fast_sums([s.flat for s in streams], pool)
    return sums if np.isfinite(sums).all() else None


def float64_sums(streams, pool, counts_only: bool = False) -> tuple[np.ndarray, int, int, bool]:
    """SUMS by materializing row blocks in float64 (any dtype, LoRA, non-finite data).

    Returns (sums, NaN count in θ, Inf count in θ, all streams finite). Sums skip non-finite
    elements; counts compare values as stored (LoRA streams: merged and rounded to the base dtype).
    ``counts_only`` computes the counts alone (the LoRA path has its sums from the algebra).
    """
    rows, cols = streams[0].shape2d
    step = max(1, _ROWS // max(cols, 1))
    extra = K.N_SUMS

    def block(r0: int) -> np.ndarray:  # (SUMS..., nan, inf, non-finite elements in any stream)
        r1 = min(rows, r0 + step)
        out = np.zeros(K.N_SUMS + 3)
        cmp = [s.compare64(r0, r1).reshape(-1) for s in streams]
        nonfinite = counts_only  # non-finite values in θ make its sums non-finite: count them only then
        if not counts_only:
            vals = [
                c if isinstance(s, DenseStream) else s.rows64(r0, r1).reshape(-1)
                for s, c in zip(streams, cmp)
            ]
            out[: K.N_SUMS] = K.sums_float64(vals)
            if not np.isfinite(out[: K.N_SUMS]).all():  # rare: redo without the non-finite elements
                nonfinite = True
                finite = np.logical_and.reduce([np.isfinite(v) for v in vals])
                out[: K.N_SUMS] = K.sums_float64(vals, finite)
                out[extra + 2] = finite.size - np.count_nonzero(finite)
        out[K.CHANGED] = np.count_nonzero(cmp[0] != cmp[1])
        if len(cmp) == 4:
            out[K.STEP_CHANGED] = np.count_nonzero(cmp[1] != cmp[2])
        if nonfinite:
            out[extra], out[extra + 1] = np.isnan(cmp[1]).sum(), np.isinf(cmp[1]).sum()
        return out

    starts = range(0, rows, step)
    parts = list(pool.map(block, starts)) if pool and len(starts) > 1 else [block(r) for r in starts]
    total = np.sum(parts, axis=0) if parts else np.zeros(K.N_SUMS + 3)
    return total[: K.N_SUMS], int(total[extra]), int(total[extra + 1]), total[extra + 2] == 0


def lora_sums(streams, pool) -> np.ndarray | None:
    """SUMS of W₀-plus-low-rank streams from ⟨Dᵢ,Dⱼ⟩ and ⟨W₀,Dᵢ⟩, never forming a dense delta.

    Each stream is W₀ + Σᵢ cᵢDᵢ (c one-hot or zero); every sum is then a quadratic form in c.
    """
    base = streams[0]
    deltas: list[LowRankDelta] = []
    coef = []
    for s in streams:
        c = np.zeros(len(streams))
        if isinstance(s, LowRankStream):
            deltas.append(s.delta)
            c[len(deltas) - 1] = 1.0
        coef.append(c)
    n = len(deltas)
    coef = [c[:n] for c in coef]
    gram = np.array([[lowrank_inner(d1, d2) for d2 in deltas] for d1 in deltas])  # (n, n)
    rows, cols = base.shape2d
    step = max(1, _ROWS // max(cols, 1))

    def block(r0: int) -> np.ndarray:  # ‖W₀‖² and ⟨W₀, Dᵢ⟩ over one row block
        w = base.rows64(r0, min(rows, r0 + step))
        return np.array(
            [float((w * w).sum())]
            + [d.scale * float(((w @ d.y) * d.x[r0 : r0 + len(w)]).sum()) for d in deltas]
        )

    starts = range(0, rows, step)
    parts = list(pool.map(block, starts)) if pool and len(starts) > 1 else [block(r) for r in starts]
    total = np.sum(parts, axis=0)
    aa, g = total[0], total[1:]
    a_, b_ = coef[0], coef[1]
    inner = lambda x, y: float(x @ gram @ y)
    out = np.zeros(K.N_SUMS)
    d = b_ - a_
    out[K.DD], out[K.AA] = inner(d, d), aa
    out[K.AB] = aa + float(g @ b_)
    out[K.BB] = aa + 2 * float(g @ b_) + inner(b_, b_)
    if len(streams) == 4:
        u, v = b_ - coef[2], coef[2] - coef[3]
        out[K.UU], out[K.VV], out[K.UV] = inner(u, u), inner(v, v), inner(u, v)
    return out if np.isfinite(out).all() else None
