"""The three ways of continuing from the base on the new task: SFT, GRPO and on-policy self-distillation.

Every arm has the same shape::

    arm(base_dir, out_dir, *, config=ArmConfig(), reporter=None, progress=False) -> ArmResult

It loads the base from ``base_dir``, trains on the new task's training prompts (of the skill pair
``config.skills``), and at step 0, every ``config.checkpoint_every`` steps, the steps in
``config.first_checkpoints`` (and at the last
step) saves ``out_dir/step-{N}`` with ``save_pretrained``, measures ground truth (greedy accuracy
on held-out items of both tasks that no probe set contains) and calls the reporter.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from experiment.arm_config import ArmConfig
from experiment.model import Codec, accuracy, generate, load_checkpoint, save_checkpoint
from experiment.objectives import StepFn, StepState, ema_update, grpo_step, self_distillation_step, sft_step
from experiment.tasks import PROBE_SETS, label_items, probe_items, sample_prompts, skill_pair

OOD_ACCURACY = "ood_accuracy"
IN_DOMAIN_ACCURACY = "in_domain_accuracy"


class Reporter(Protocol):
    """Receives each checkpoint as it is written; implementations may send it to the service."""

    def on_checkpoint(self, step: int, path: Path, labels: dict[str, float]) -> None:
        """``labels``: ground truth at this checkpoint, ``ood_accuracy`` and ``in_domain_accuracy``."""

    def on_samples(self, step: int, items: list[dict[str, str]]) -> None:
        """``items``: ``{"prompt", "response", "probe_set"}`` sampled from the live model on probe prompts."""

    def on_metrics(self, step: int, values: dict[str, float]) -> None:
        """``values``: the training statistics averaged since the previous checkpoint (loss, reward, grad
        norm; ``teacher_student_divergence`` for self-distillation), sent before the checkpoint itself."""


class NullReporter:
    """A reporter that ignores everything."""

    def on_checkpoint(self, step: int, path: Path, labels: dict[str, float]) -> None:
        pass

    def on_samples(self, step: int, items: list[dict[str, str]]) -> None:
        pass

    def on_metrics(self, step: int, values: dict[str, float]) -> None:
        pass


@dataclass(frozen=True)
class CheckpointResult:
    step: int
    path: Path
    labels: dict[str, float]
    """Ground truth sent to the reporter."""
    train: dict[str, float] = field(default_factory=dict)
    """Training statistics averaged over the steps since the previous checkpoint (not sent)."""


@dataclass(frozen=True)
class ArmResult:
    arm: str
    out_dir: Path
    config: ArmConfig
    checkpoints: tuple[CheckpointResult, ...]
    wall_seconds: float


def label_prompts(config: ArmConfig) -> dict[str, list[str]]:
    """The held-out prompts each ground-truth label is measured on: ``n_eval`` per task, after the
    old skill's ``ood_probe_items`` probe items (and after the new skill's committed probe set)."""
    old, new = skill_pair(config.skills)
    return {OOD_ACCURACY: [it["prompt"] for it in label_items(old, config.n_eval, after=config.ood_probe_items)],
            IN_DOMAIN_ACCURACY: [it["prompt"] for it in label_items(new, config.n_eval)]}


def _labels(model: torch.nn.Module, codec: Codec, config: ArmConfig) -> dict[str, float]:
    return {label: accuracy(model, codec, prompts) for label, prompts in label_prompts(config).items()}


def _samples(
    model: torch.nn.Module, codec: Codec, n: int, generator: torch.Generator, skills: str
) -> list[dict[str, str]]:
    items = []
    for task in skill_pair(skills):
        prompts = [it["prompt"] for it in probe_items(task, n)]
        # Greedy, like the Trainer callback: the service compares against the base's greedy responses.
        responses = generate(model, codec, prompts, temperature=0.0, generator=generator)
        items += [
            {"prompt": p, "response": r, "probe_set": PROBE_SETS[task][0]}
            for p, r in zip(prompts, responses, strict=True)
        ]
    return items


def _run(
    arm: str,
    step_fn: StepFn,
    base_dir: Path,
    out_dir: Path,
    config: ArmConfig,
    reporter: Reporter | None,
    progress: bool,
    *,
    reference: Literal["none", "base"] = "none",
    after_step: Callable[[torch.nn.Module, StepState], None] | None = None,
) -> ArmResult:
    start = time.perf_counter()
    reporter = reporter or NullReporter()
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    model, tokenizer = load_checkpoint(base_dir)
    codec = Codec(tokenizer)
    state = StepState(
        codec=codec,
        config=config,
        rng=np.random.default_rng(config.seed),
        generator=torch.Generator().manual_seed(config.seed),
    )
    if reference == "base":
        state.reference = copy.deepcopy(model).eval().requires_grad_(False)
    sample_gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    checkpoints: list[CheckpointResult] = []
    pending: dict[str, list[float]] = {}

    def checkpoint(step: int) -> None:
        model.eval()
        path = save_checkpoint(model, tokenizer, out_dir / f"step-{step}")
        labels = _labels(model, codec, config)
        train = {k: float(np.mean(v)) for k, v in pending.items()}
        pending.clear()
        if train:
            reporter.on_metrics(step, train)
        checkpoints.append(CheckpointResult(step=step, path=path, labels=labels, train=train))
        reporter.on_checkpoint(step, path, labels)
        if config.n_samples:
            reporter.on_samples(step, _samples(model, codec, config.n_samples, sample_gen, config.skills))
        model.train()

    new_task = skill_pair(config.skills)[1]
    checkpoint(0)
    bar = tqdm(range(1, config.steps + 1), desc=arm, disable=not progress, mininterval=1.0)
    for step in bar:
        prompts = sample_prompts(new_task, config.batch_size, state.rng)
        loss, stats = step_fn(model, prompts, state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm))
        opt.step()
        if after_step is not None:
            after_step(model, state)
        stats["loss"] = float(loss.detach())
        for k, v in stats.items():
            pending.setdefault(k, []).append(v)
        if step % config.checkpoint_every == 0 or step == config.steps or step in config.first_checkpoints:
            checkpoint(step)
            bar.set_postfix({k: f"{v:.2f}" for k, v in checkpoints[-1].labels.items()})
    return ArmResult(
        arm=arm,
        out_dir=out_dir,
        config=config,
        checkpoints=tuple(checkpoints),
        wall_seconds=time.perf_counter() - start,
    )


def train_sft(
    base_dir: Path,
    out_dir: Path,
    *,
    config: ArmConfig = ArmConfig(),
    reporter: Reporter | None = None,
    progress: bool = False,
) -> ArmResult:
    """Supervised fine-tuning on one fixed correct answer per prompt (`canonical_answer`)."""
    return _run("sft", sft_step, base_dir, out_dir, config, reporter, progress)


def train_grpo(
    base_dir: Path,
    out_dir: Path,
    *,
    config: ArmConfig = ArmConfig(),
    reporter: Reporter | None = None,
    progress: bool = False,
) -> ArmResult:
    """On-policy RL with a 0/1 verifier reward and GRPO group-normalised advantages.

    Per prompt, ``group_size`` samples; advantage ``(r - mean) / (std + 1e-4)`` within the group;
    loss ``-mean(advantage * mean_t log pi(y_t | x, y<t))`` (one update per batch, so the PPO ratio
    is 1 and needs no clipping), plus ``kl_coef * KL(pi || base)`` when ``kl_coef > 0``
    (arXiv:2402.03300).
    """
    reference: Literal["none", "base"] = "base" if config.kl_coef > 0 else "none"
    return _run("grpo", grpo_step, base_dir, out_dir, config, reporter, progress, reference=reference)


def train_self_distillation(
    base_dir: Path,
    out_dir: Path,
    *,
    config: ArmConfig = ArmConfig(),
    reporter: Reporter | None = None,
    progress: bool = False,
) -> ArmResult:
    """On-policy self-distillation (SDFT, arXiv:2601.19897).

    The student samples ``y ~ pi(.|x)``; the teacher is the model with a correct demonstration in
    context, ``pi_T(.|"B:dgbe>bd;B:dgbe>", y<t)`` (by default SFT's fixed answer, see
    ``ArmConfig.demonstration``); the loss is the per-token reverse KL summed over the vocabulary and averaged over
    response tokens. The teacher's weights are the base (``teacher="frozen"``) or an EMA of the
    student (``teacher="ema"``, rate ``ema_rate``).
    """
    after = ema_update if config.teacher == "ema" else None
    return _run(
        f"self_distillation_{config.teacher}",
        self_distillation_step,
        base_dir,
        out_dir,
        config,
        reporter,
        progress,
        reference="base",
        after_step=after,
    )


ARMS: dict[str, Callable[..., ArmResult]] = {
    "sft": train_sft,
    "grpo": train_grpo,
    "self_distillation": train_self_distillation,
}


def resolve_arm(name: str, config: ArmConfig) -> tuple[Callable[..., ArmResult], ArmConfig]:
    """Arm function and config for a name; ``self_distillation_frozen`` / ``_ema`` pick the teacher."""
    for teacher in ("frozen", "ema"):
        if name == f"self_distillation_{teacher}":
            return train_self_distillation, replace(config, teacher=teacher)
    if name not in ARMS:
        known = sorted([*ARMS, "self_distillation_frozen", "self_distillation_ema"])
        raise ValueError(f"unknown arm {name!r}; choose from {known}")
    return ARMS[name], config
