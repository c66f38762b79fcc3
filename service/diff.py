"""`forgetwatch diff`: parameter drift between two checkpoints on this machine, no service needed."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

from drift.aggregate import DriftStats
from drift.params import compare
from drift.spectral import SpectralOptions


def _fmt(value: float | None, spec: str = ".3e") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _line(label: str, s: DriftStats) -> str:
    return (f"{label:>10} {s.numel:>12,} {_fmt(s.relative_l2_distance):>11} {_fmt(s.cosine_similarity, '.6f'):>9} "
            f"{_fmt(s.update_cosine_similarity, '.3f'):>8} {_fmt(s.normalized_spectral_shift):>10} "
            f"{_fmt(s.max_principal_angle_deg, '.2f'):>8} {_fmt(s.changed_ratio, '.3f'):>8}")


def run_diff(base: Path, checkpoint: Path, *, previous: Path | None, spectral: bool, as_json: bool,
             spectral_k: int, cache_dir: Path | None) -> int:
    from tqdm import tqdm

    bar = tqdm(desc="tensors", unit="tensor", disable=as_json or not sys.stderr.isatty(), file=sys.stderr)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = compare(base, checkpoint, previous=previous, before_previous=base if previous else None,
                     spectral=spectral, spectral_options=SpectralOptions(k=spectral_k), cache_dir=cache_dir,
                     progress=progress)
    bar.close()
    summary = report.summary
    if as_json:
        print(json.dumps(dataclasses.asdict(summary), default=str, indent=2))
        return 0
    header = (f"{'block':>10} {'params':>12} {'rel_L2':>11} {'cosine':>9} {'upd_cos':>8} {'NSS':>10} "
              f"{'angle°':>8} {'changed':>8}")
    print(header)
    print("-" * len(header))
    for block, stats in summary.blocks.items():
        print(_line(str(block), stats))
    for kind, stats in summary.modules.items():
        print(_line(kind, stats))
    print("-" * len(header))
    print(_line("global", summary.overall))
    problems = [(summary.n_missing, "missing", summary.missing), (summary.n_extra, "extra", summary.extra),
                (summary.n_shape_mismatch, "shape changed", summary.shape_mismatch),
                (summary.n_nonfinite_tensors, "with NaN/Inf", summary.nonfinite_tensors)]
    for count, what, names in problems:
        if count:
            print(f"{count} tensors {what}: {', '.join(names)}{' ...' if count > len(names) else ''}")
    return 0
