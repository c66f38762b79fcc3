"""numba kernels behind ``drift._kernels`` (imported only when numba is installed).

Each kernel adds its sums into ``out`` (see ``drift._kernels`` for the layout). bfloat16 arrays
arrive as uint16 bit patterns and are widened block by block into L1-resident float32 buffers;
every sum is accumulated in float64. ``fastmath`` is limited to reassociation and contraction,
which lets LLVM vectorize the reductions without assuming finite inputs. Compiled code is cached
next to this file (numba ``cache=True``).
"""

import numpy as np
from numba import njit

_FLAGS = {"reassoc", "contract"}
_BLOCK = 2048  # elements per widened block: 4 streams x 8 KiB stay in L1


@njit(nogil=True, fastmath=_FLAGS, inline="always")
def widen(src, dst):  # bf16 bits -> float32 bits
    for j in range(src.size):
        dst[j] = np.uint32(src[j]) << 16


@njit(nogil=True, fastmath=_FLAGS, inline="always")
def acc2(a, b, m, out):
    dd = aa = bb = ab = 0.0
    ch = 0
    for j in range(m):
        x = np.float64(a[j])
        y = np.float64(b[j])
        d = y - x
        dd += d * d
        aa += x * x
        bb += y * y
        ab += x * y
        ch += np.int64(a[j] != b[j])
    out[0] += dd
    out[1] += aa
    out[2] += bb
    out[3] += ab
    out[4] += ch


@njit(nogil=True, fastmath=_FLAGS, inline="always")
def acc4(a, b, p, q, m, out):
    uu = vv = uv = 0.0
    ch = 0
    for j in range(m):
        y = np.float64(b[j])
        z = np.float64(p[j])
        u = y - z
        v = z - np.float64(q[j])
        uu += u * u
        vv += v * v
        uv += u * v
        ch += np.int64(b[j] != p[j])
    out[5] += uu
    out[6] += vv
    out[7] += uv
    out[8] += ch


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def sums2_bf16(a, b, out):
    wa, wb = np.empty(_BLOCK, np.uint32), np.empty(_BLOCK, np.uint32)
    fa, fb = wa.view(np.float32), wb.view(np.float32)
    for s in range(0, a.size, _BLOCK):
        m = min(_BLOCK, a.size - s)
        widen(a[s : s + m], wa[:m])
        widen(b[s : s + m], wb[:m])
        acc2(fa[:m], fb[:m], m, out)


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def sums4_bf16(a, b, p, q, out):
    wa, wb = np.empty(_BLOCK, np.uint32), np.empty(_BLOCK, np.uint32)
    wp, wq = np.empty(_BLOCK, np.uint32), np.empty(_BLOCK, np.uint32)
    fa, fb, fp, fq = wa.view(np.float32), wb.view(np.float32), wp.view(np.float32), wq.view(np.float32)
    for s in range(0, a.size, _BLOCK):
        m = min(_BLOCK, a.size - s)
        e = s + m
        widen(a[s:e], wa[:m])
        widen(b[s:e], wb[:m])
        widen(p[s:e], wp[:m])
        widen(q[s:e], wq[:m])
        acc2(fa[:m], fb[:m], m, out)
        acc4(fa[:m], fb[:m], fp[:m], fq[:m], m, out)


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def sums2_float(a, b, out):
    for s in range(0, a.size, _BLOCK):
        m = min(_BLOCK, a.size - s)
        acc2(a[s : s + m], b[s : s + m], m, out)


@njit(nogil=True, fastmath=_FLAGS, cache=True)
def sums4_float(a, b, p, q, out):
    for s in range(0, a.size, _BLOCK):
        m = min(_BLOCK, a.size - s)
        e = s + m
        acc2(a[s:e], b[s:e], m, out)
        acc4(a[s:e], b[s:e], p[s:e], q[s:e], m, out)


@njit(nogil=True, cache=True)
def select_at_least(values, threshold, offset, idx, out):
    n = 0
    for i in range(values.size):
        x = abs(values[i])
        if x >= threshold:
            if n < idx.size:
                idx[n] = offset + i
                out[n] = x
            n += 1
    return n
