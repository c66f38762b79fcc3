"""Parameter-drift throughput against an in-process baseline: ``python -m bench.param_drift``.

Builds once (cached under ``$TMPDIR/forgetwatch-bench``) a base and a checkpoint of a small
LLM-shaped model in bf16 safetensors (vocab 32000, hidden 2048, MLP 5632, 4 layers, untied head:
~0.67 GB each), reads both files once to warm the page cache, then times in this process (best of
several runs; (b) and (c) alternate, so both see the same load on a shared machine):

  (a) naive    the straightforward PyTorch loop: per tensor ``safe_open().get_tensor`` both, ``.float()``,
               subtract, ``torch.norm``, ``F.cosine_similarity``;
  (b) ours     ``drift.params.tensor_rows(base, ckpt, spectral=False)`` (all sums, counts, float64);
  (c) yardstick ``np.dot(x, x)`` over a float32 array as large as both files: streaming the bytes once.

speedup_vs_naive = time_a / time_b; bandwidth_fraction = time_c / time_b.

Peak extra RSS: the safetensors files are memory-mapped, so their pages count as file-backed RSS
(``RssFile``), which the kernel can drop at will. What (b) adds is anonymous memory, so a sampler
thread reads ``RssAnon`` from ``/proc/self/status`` every millisecond during the (b)/(c) rounds and
reports the peak minus the value just before them ((c)'s array is allocated before that baseline and
np.dot allocates nothing). ``VmHWM`` would include the mapped file pages. The naive loop's peak is
printed too, as a check that the sampler sees allocations.

The spectral pass is timed separately on a 4096×4096 bf16 pair with the base's SVD already cached.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from drift.params import tensor_rows
from drift.spectral import SpectralOptions

ROOT = Path(tempfile.gettempdir()) / "forgetwatch-bench"
LAYOUT = {"vocab": 32000, "hidden": 2048, "mlp": 5632, "layers": 4}


def _shapes() -> dict[str, tuple[int, ...]]:
    v, h, f = LAYOUT["vocab"], LAYOUT["hidden"], LAYOUT["mlp"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(LAYOUT["layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
        shapes |= {p + f"self_attn.{x}_proj.weight": (h, h) for x in "qkvo"}
        shapes |= {
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        }
    return shapes


def _pair(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> tuple[Path, Path]:
    """base ~ N(0, 0.02²); checkpoint = base + a small dense update (bf16 keeps about half unchanged)."""
    stamp = folder / "stamp.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {
        "shapes": list(map(list, shapes.values())),
        "seed": seed,
    }:
        return folder / "base.safetensors", folder / "ckpt.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    base, ckpt = {}, {}
    for name, shape in shapes.items():
        w = torch.randn(shape, generator=gen) * 0.02
        base[name] = w.to(torch.bfloat16)
        ckpt[name] = (w + 2e-4 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        del w
    save_file(base, str(folder / "base.safetensors"))
    save_file(ckpt, str(folder / "ckpt.safetensors"))
    stamp.write_text(json.dumps({"shapes": list(map(list, shapes.values())), "seed": seed}))
    return folder / "base.safetensors", folder / "ckpt.safetensors"


def _warm(*files: Path) -> None:
    buf = bytearray(64 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def _rss_anon_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class _PeakAnon:
    """Samples RssAnon every millisecond; ``peak_extra_mb`` is the peak above the starting value."""

    def __enter__(self):
        self.start, self.peak, self._stop = _rss_anon_kb(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_anon_kb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon_kb())
        self.peak_extra_mb = max(0, self.peak - self.start) / 1024


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _naive(base: Path, ckpt: Path) -> None:
    with safe_open(str(base), "pt") as fa, safe_open(str(ckpt), "pt") as fb:
        for name in fa.keys():  # noqa: SIM118 (safe_open is not a dict)
            a, b = fa.get_tensor(name).float(), fb.get_tensor(name).float()
            d = b - a
            torch.norm(d).item()
            F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _ours_and_yardstick(
    base: Path, ckpt: Path, total: int, rounds: int = 7
) -> tuple[float, float, _PeakAnon]:
    """Best times of (b) and (c), run alternately, and the RSS sampler of those rounds."""
    x = np.ones(total // 4, dtype=np.float32)  # allocated before the RSS baseline
    times_b, times_c = [], []
    with _PeakAnon() as mem:
        for _ in range(rounds):
            times_c.append(_best(lambda: np.dot(x, x), 1))
            times_b.append(_best(lambda: tensor_rows(base, ckpt, spectral=False), 1))
    return min(times_b), min(times_c), mem


def main() -> None:
    base, ckpt = _pair(ROOT / "model", _shapes(), seed=0)
    spec_base, spec_ckpt = _pair(
        ROOT / "spectral", {"model.layers.0.self_attn.q_proj.weight": (4096, 4096)}, seed=1
    )
    total = base.stat().st_size + ckpt.stat().st_size
    _warm(base, ckpt, spec_base, spec_ckpt)
    print(
        f"files: 2 x {base.stat().st_size / 1e9:.3f} GB bf16, {len(_shapes())} tensors, cores={os.cpu_count()}"
    )

    rows = tensor_rows(base, ckpt, spectral=False)  # loads the JIT kernels
    time_b, time_c, mem = _ours_and_yardstick(base, ckpt, total)
    print(f"(c) numpy dot over {total / 1e9:.2f} GB: {time_c:.4f} s ({total / time_c / 1e9:.1f} GB/s)")
    rel = np.sqrt(sum(r.sum_sq_delta for r in rows) / sum(r.sum_sq_base for r in rows))
    changed = sum(r.changed for r in rows) / sum(r.numel for r in rows)
    print(
        f"(b) forgetwatch L2/cosine pass: {time_b:.4f} s ({total / time_b / 1e9:.2f} GB/s); "
        f"relative L2 {rel:.3e}, changed share {changed:.3f}, peak extra RssAnon {mem.peak_extra_mb:.1f} MB"
    )

    with _PeakAnon() as naive_mem:
        time_a = _best(lambda: _naive(base, ckpt), 2)
    print(f"(a) naive PyTorch loop: {time_a:.4f} s, peak extra RssAnon {naive_mem.peak_extra_mb:.1f} MB")

    options = SpectralOptions()
    cache = ROOT / "svd-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first run computes and caches the base's SVD
    t = time.perf_counter()
    tensor_rows(spec_base, spec_ckpt, spectral_options=options, cache_dir=cache)
    cold = time.perf_counter() - t
    warm = _best(lambda: tensor_rows(spec_base, spec_ckpt, spectral_options=options, cache_dir=cache), 2)
    print(
        f"spectral k={options.k} alpha={options.alpha}: {warm:.2f} s per 4096x4096 matrix with the cached base "
        f"(first run, computing the base: {cold:.2f} s)"
    )
    print(
        f"param_drift speedup_vs_naive={time_a / time_b:.2f} bandwidth_fraction={time_c / time_b:.2f} "
        f"peak_extra_rss_mb={mem.peak_extra_mb:.0f}"
    )


if __name__ == "__main__":
    main()
