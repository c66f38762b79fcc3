"""``run_experiment``: pretrain (or reuse) the base, then continue it on task B with each arm.

Layout written under ``out_dir``::

    out_dir/<run name>/step-0/     the base, as the run's first checkpoint
    out_dir/<run name>/step-N/     save_pretrained model + tokenizer every checkpoint_every steps

The base itself lives in ``cache_dir/base-<key>`` (see `pretrained_base`).

Run ``python -m experiment.train OUT_DIR`` to run the demo budget and print the table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch

from experiment.arm_config import ArmConfig
from experiment.arms import (
    IN_DOMAIN_ACCURACY,
    OOD_ACCURACY,
    ArmResult,
    NullReporter,
    Reporter,
    resolve_arm,
)
from experiment.pretrain import BaseConfig, BaseResult, pretrained_base
from experiment.tasks import PROBE_SET_SIZE

log = logging.getLogger(__name__)

DEFAULT_ARMS = ("sft", "grpo", "self_distillation")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "forgetwatch" / "experiment"

DEMO_CONFIGS: dict[str, ArmConfig] = {
    "sft": ArmConfig(steps=400, lr=3e-4, batch_size=16, checkpoint_every=50),
    "grpo": ArmConfig(steps=300, lr=1e-4, batch_size=32, group_size=8, checkpoint_every=50),
    "self_distillation": ArmConfig(
        steps=300, lr=5e-5, batch_size=16, group_size=8, teacher="frozen", checkpoint_every=50
    ),
}
"""The demo budget, about 2.5 minutes for the three arms on a busy 2-core CPU (one torch thread)."""

ReporterFactory = Callable[[str, str, Path], Reporter]
"""``(arm, run_name, base_dir) -> Reporter``, called once per arm before it starts."""

T = TypeVar("T")


@dataclass(frozen=True)
class ExperimentResult:
    base: BaseResult
    arms: dict[str, ArmResult]
    """Keyed by arm name as given in ``arms``."""
    run_names: dict[str, str]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)``, restoring the previous value afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_num_threads() -> int:
    """Half the cores (at least one): the rest stay free for the service's drift jobs."""
    return max(1, (os.cpu_count() or 2) // 2)


def _per_arm(value: T | Mapping[str, T] | None, arm: str) -> T | None:
    if isinstance(value, Mapping):
        return value.get(arm)
    return value


def arm_config(
    arm: str,
    *,
    steps: int | Mapping[str, int] | None = None,
    checkpoint_every: int | Mapping[str, int] | None = None,
    lr: float | Mapping[str, float] | None = None,
    batch_size: int | Mapping[str, int] | None = None,
    seed: int = 0,
    first_checkpoints: Sequence[int] = (),
    ood_probe_items: int = PROBE_SET_SIZE,
) -> ArmConfig:
    """The demo config of ``arm`` with the given overrides (a value, or a mapping arm -> value)."""
    family = "self_distillation" if arm.startswith("self_distillation") else arm
    if family not in DEMO_CONFIGS:
        raise ValueError(
            f"unknown arm {arm!r}; choose from {sorted(DEMO_CONFIGS)} or self_distillation_<teacher>"
        )
    overrides = {
        "steps": _per_arm(steps, arm),
        "checkpoint_every": _per_arm(checkpoint_every, arm),
        "lr": _per_arm(lr, arm),
        "batch_size": _per_arm(batch_size, arm),
    }
    return replace(DEMO_CONFIGS[family], seed=seed, first_checkpoints=tuple(first_checkpoints),
                   ood_probe_items=ood_probe_items,
                   **{k: v for k, v in overrides.items() if v is not None})


def run_name(arm: str, config: ArmConfig, prefix: str = "") -> str:
    return f"{prefix}{arm}-lr{config.lr:g}-s{config.seed}"


def run_experiment(
    out_dir: Path,
    *,
    arms: Sequence[str] = DEFAULT_ARMS,
    steps: int | Mapping[str, int] | None = None,
    checkpoint_every: int | Mapping[str, int] | None = None,
    first_checkpoints: Sequence[int] = (),
    ood_probe_items: int = PROBE_SET_SIZE,
    lr: float | Mapping[str, float] | None = None,
    batch_size: int | Mapping[str, int] | None = None,
    seed: int = 0,
    reporter_factory: ReporterFactory | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    base_config: BaseConfig | None = None,
    arm_configs: Mapping[str, ArmConfig] | None = None,
    num_threads: int | None = None,
    run_prefix: str = "",
) -> ExperimentResult:
    """Pretrain or load the cached base, then run each arm from it, one after another.

    ``steps``, ``checkpoint_every``, ``lr`` and ``batch_size`` override `DEMO_CONFIGS`, either for
    every arm (a value) or per arm (a mapping); ``arm_configs[arm]`` replaces an arm's config
    entirely. Arms: ``sft``, ``grpo``, ``self_distillation`` (EMA teacher unless the config says
    otherwise), ``self_distillation_frozen``, ``self_distillation_ema``. The same ``seed`` pretrains
    the base and seeds every arm; every arm trains the new task of the base's skill pair.
    """
    if not arms:
        raise ValueError("arms must name at least one arm")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms must not repeat: {list(arms)}")
    out_dir = Path(out_dir)
    base_config = base_config or BaseConfig()
    configs = {}
    for arm in arms:
        config = (arm_configs or {}).get(arm) or arm_config(
            arm, steps=steps, checkpoint_every=checkpoint_every, lr=lr, batch_size=batch_size, seed=seed,
            first_checkpoints=first_checkpoints, ood_probe_items=ood_probe_items,
        )
        # validates the name before any training
        configs[arm] = resolve_arm(arm, replace(config, skills=base_config.skills))
    factory = reporter_factory or (lambda arm, name, base_dir: NullReporter())
    with torch_threads(num_threads or default_num_threads()):
        base = pretrained_base(cache_dir or DEFAULT_CACHE_DIR, config=base_config, seed=seed, progress=progress)
        if base.stats.get("train_accuracy", 1.0) < base_config.target_accuracy:
            log.warning("the base of seed %d stopped at step %d with old-skill accuracy %.2f, short of the target "
                        "%.2f: its probes will be noisy and its runs weakly labelled; raise BaseConfig.max_steps "
                        "or use another seed", seed, int(base.stats.get("steps", 0)), base.stats["train_accuracy"],
                        base_config.target_accuracy)
        results, names = {}, {}
        for arm, (fn, config) in configs.items():
            names[arm] = run_name(arm, config, run_prefix)
            reporter = factory(arm, names[arm], base.path)
            results[arm] = fn(
                base.path, out_dir / names[arm], config=config, reporter=reporter, progress=progress
            )
    return ExperimentResult(base=base, arms=results, run_names=names)


def format_table(result: ExperimentResult) -> str:
    """A plain-text table per arm: step, task-A (ood) and task-B (in-domain) accuracy."""
    base = result.base
    lines = [
        f"base: {base.path} ({'cached' if base.cached else f'pretrained in {base.wall_seconds:.0f} s'}), "
        + ", ".join(f"{k}={v:.3g}" for k, v in base.stats.items())
    ]
    for arm, res in result.arms.items():
        lines.append(f"\n{arm} ({result.run_names[arm]}, {res.wall_seconds:.0f} s)")
        lines.append("  step  taskA(ood)  taskB(in_domain)")
        for c in res.checkpoints:
            lines.append(
                f"  {c.step:4d}  {c.labels[OOD_ACCURACY]:10.3f}  {c.labels[IN_DOMAIN_ACCURACY]:16.3f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run the forgetwatch experiment's demo budget and print a table."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run_experiment(
        args.out_dir,
        arms=args.arms,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        cache_dir=args.cache_dir,
        num_threads=args.threads,
    )
    print(format_table(result))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
