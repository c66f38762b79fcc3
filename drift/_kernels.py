"""Fused one-pass reductions over aligned tensor streams, accumulated in float64.

For streams ``a = θ₀`` (base), ``b = θ`` (checkpoint) and optionally ``p = θ_{t-1}``, ``q = θ_{t-2}``
(all flat, equal length) the kernels return the float64 vector ``SUMS`` indexed by:

    DD = Σ(b-a)²  AA = Σa²  BB = Σb²  AB = Σab  CHANGED = #{a≠b}
    UU = Σ(b-p)²  VV = Σ(p-q)²  UV = Σ(b-p)(p-q)  STEP_CHANGED = #{b≠p}

Differences are formed element by element (never ‖a‖²+‖b‖²-2a·b), so θ ≈ θ₀ loses nothing.

Backends: with ``numba`` installed, bfloat16 (as uint16 bits), float32 and float64 streams are
reduced by JIT kernels that widen each L1-sized block and do all sums in one pass, called on
~1M-element chunks from a thread pool (they release the GIL). Without numba, or for other dtypes,
mixed dtypes and non-finite data, a numpy float64 path is used (``sums_float64``); non-finite
elements are then left out of the sums and counted instead.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

DD, AA, BB, AB, CHANGED, UU, VV, UV, STEP_CHANGED = range(9)
N_SUMS = 9
CHUNK = 1 << 20  # elements per task: big enough to hide call overhead, small enough to balance threads
_FAST_DTYPES = {"bfloat16": np.uint16, "float32": np.float32, "float64": np.float64}

_numba_kernels = None  # {(n_streams, is_bf16): kernel}, built lazily; False when numba is unavailable
use_numba = True  # tests switch this off to exercise the numpy path


def _compile():
    global _numba_kernels
    if _numba_kernels is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            _numba_kernels = False
        else:
            from drift import _numba_kernels as nk

            _numba_kernels = {
                (2, True): nk.sums2_bf16,
                (4, True): nk.sums4_bf16,
                (2, False): nk.sums2_float,
                (4, False): nk.sums4_float,
            }
    return _numba_kernels


def select_at_least(values: np.ndarray, threshold: float, offset: int, idx: np.ndarray, out: np.ndarray) -> int:
    """Write ``offset`` + the flat positions and the magnitudes of the entries of ``values`` (1-D float32)
    with ``|value| >= threshold`` into ``idx``/``out`` from their start, in one pass; return how many
    there were (only the first ``idx.size`` are written)."""
    if use_numba and _compile():
        from drift import _numba_kernels as nk

        return int(nk.select_at_least(values, np.float32(threshold), offset, idx, out))
    pos = np.flatnonzero(np.abs(values) >= threshold)
    n = min(pos.size, idx.size)
    idx[:n], out[:n] = pos[:n] + offset, np.abs(values[pos[:n]])
    return int(pos.size)


def fast_path_ok(dtypes: list[str]) -> bool:
    """True when the JIT kernels can reduce streams of these dtypes directly."""
    return use_numba and len(set(dtypes)) == 1 and dtypes[0] in _FAST_DTYPES and bool(_compile())


def fast_sums(streams: list[np.ndarray], pool: Executor | None) -> np.ndarray:
    """SUMS over flat raw streams [a, b] or [a, b, p, q] of one fast dtype (see ``fast_path_ok``)."""
    kernel = _compile()[len(streams), streams[0].dtype == np.uint16]
    n = streams[0].size

    def run(start: int) -> np.ndarray:
        out = np.zeros(N_SUMS)
        part = [s[start : start + CHUNK] for s in streams]
        kernel(*part, out)
        return out

    starts = range(0, n, CHUNK)
    if pool is None or len(starts) == 1:
        parts = [run(s) for s in starts] or [np.zeros(N_SUMS)]
    else:
        parts = list(pool.map(run, starts))
    return np.sum(parts, axis=0)  # fixed chunking and order: the result does not depend on threads


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    # not x @ y: BLAS threads on many small calls oversubscribe a busy machine badly
    return float(np.multiply(x, y).sum())


def sums_float64(streams: list[np.ndarray], finite: np.ndarray | None = None) -> np.ndarray:
    """The float sums of SUMS (counts left at 0) over float64 streams [a, b] or [a, b, p, q];
    ``finite`` masks the elements summed."""
    out = np.zeros(N_SUMS)
    if finite is not None:
        streams = [np.where(finite, s, 0.0) for s in streams]
    a, b = streams[0], streams[1]
    d = b - a
    out[DD], out[AA], out[BB], out[AB] = _dot(d, d), _dot(a, a), _dot(b, b), _dot(a, b)
    if len(streams) == 4:
        p, q = streams[2], streams[3]
        u, v = b - p, p - q
        out[UU], out[VV], out[UV] = _dot(u, u), _dot(v, v), _dot(u, v)
    return out
