"""The three ways of continuing from the base on the new task: SFT, GRPO and on-policy self-distillation.

Every arm has the same shape::

    arm(base_dir, out_dir, *, config=ArmConfig(), reporter=None, progress=False) -> ArmResult

It loads the base from ``base_dir``, trains on the new task's training prompts (of the skill pair
``config.skills``), and at step 0 and every ``config.checkpoint_every`` steps (and at the last
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

from experiment.model import (
    Codec,
    accuracy,
    generate,
    load_checkpoint,
    sample_ids,
    save_checkpoint,
    sequence_logits,
)
from experiment.pretrain import lm_loss, pack
from experiment.tasks import (
    DEFAULT_SKILLS,
    PROBE_SETS,
    canonical_answer,
    correct_answers,
    demonstration_prompt,
    is_correct,
    label_items,
    probe_items,
    sample_prompts,
    skill_pair,
)

OOD_ACCURACY = "ood_accuracy"
IN_DOMAIN_ACCURACY = "in_domain_accuracy"


class Reporter(Protocol):
    """Receives each checkpoint as it is written; implementations may send it to the service."""

    def on_checkpoint(self, step: int, path: Path, labels: dict[str, float]) -> None:
        """``labels``: ground truth at this checkpoint, ``ood_accuracy`` and ``in_domain_accuracy``."""

    def on_samples(self, step: int, items: list[dict[str, str]]) -> None:
        """``items``: ``{"prompt", "response", "probe_set"}`` sampled from the live model on probe prompts."""


class NullReporter:
    """A reporter that ignores everything."""

    def on_checkpoint(self, step: int, path: Path, labels: dict[str, float]) -> None:
        pass

    def on_samples(self, step: int, items: list[dict[str, str]]) -> None:
        pass


@dataclass(frozen=True)
class ArmConfig:
    """Budget and hyper-parameters of one arm; fields an arm does not use are ignored."""

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 16
    """Prompts per step."""
    seed: int = 0
    checkpoint_every: int = 50
    group_size: int = 8
    """On-policy arms: responses sampled per prompt."""
    temperature: float = 1.0
    kl_coef: float = 0.0
    """GRPO: weight of a KL(policy || base) penalty (k3 estimator); off by default."""
    teacher: Literal["frozen", "ema"] = "ema"
    """Self-distillation: the base weights (frozen) or an EMA of the student."""
    ema_rate: float = 0.05
    """Self-distillation with the EMA teacher: teacher <- (1 - rate) * teacher + rate * student per step."""
    demonstration: Literal["canonical", "random"] = "canonical"
    """Self-distillation: the demonstration in the teacher's context is SFT's fixed answer (as in
    SDFT, which learns from the same demonstrations SFT would use) or a random correct answer."""
    n_eval: int = 256
    """Held-out probe prompts per task for the ground-truth labels."""
    n_samples: int = 16
    """Responses per probe set passed to ``reporter.on_samples`` at each checkpoint."""
    max_grad_norm: float = 1.0
    skills: str = DEFAULT_SKILLS
    """The skill pair (`experiment.tasks.SKILL_PAIRS`): its new task is trained, both are labelled."""

    def __post_init__(self) -> None:
        skill_pair(self.skills)
        if self.steps < 1 or self.checkpoint_every < 1 or self.batch_size < 1 or self.group_size < 1:
            raise ValueError(f"steps, checkpoint_every, batch_size and group_size must be >= 1: {self}")
        if not self.lr > 0 or self.n_eval < 1 or self.n_samples < 0:
            raise ValueError(f"lr and n_eval must be positive and n_samples >= 0: {self}")
        if self.teacher not in ("frozen", "ema"):
            raise ValueError(f"teacher must be 'frozen' or 'ema', got {self.teacher!r}")
        if self.demonstration not in ("canonical", "random"):
            raise ValueError(f"demonstration must be 'canonical' or 'random', got {self.demonstration!r}")
        if not 0.0 < self.ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {self.ema_rate}")


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


# A step function: (model, prompts, state) -> (loss, statistics). State carries generators and models.
StepFn = Callable[[torch.nn.Module, list[str], "_State"], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class _State:
    codec: Codec
    config: ArmConfig
    rng: np.random.Generator
    generator: torch.Generator
    reference: torch.nn.Module | None = None
    """GRPO's base for the KL term, or the self-distillation teacher."""


def _labels(model: torch.nn.Module, codec: Codec, n_eval: int, skills: str) -> dict[str, float]:
    old, new = skill_pair(skills)
    return {
        OOD_ACCURACY: accuracy(model, codec, [it["prompt"] for it in label_items(old, n_eval)]),
        IN_DOMAIN_ACCURACY: accuracy(model, codec, [it["prompt"] for it in label_items(new, n_eval)]),
    }


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
    after_step: Callable[[torch.nn.Module, _State], None] | None = None,
) -> ArmResult:
    start = time.perf_counter()
    reporter = reporter or NullReporter()
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    model, tokenizer = load_checkpoint(base_dir)
    codec = Codec(tokenizer)
    state = _State(
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
        labels = _labels(model, codec, config.n_eval, config.skills)
        train = {k: float(np.mean(v)) for k, v in pending.items()}
        pending.clear()
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
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoint(step)
            bar.set_postfix({k: f"{v:.2f}" for k, v in checkpoints[-1].labels.items()})
    return ArmResult(
        arm=arm,
        out_dir=out_dir,
        config=config,
        checkpoints=tuple(checkpoints),
        wall_seconds=time.perf_counter() - start,
    )


def _rollouts(
    model: torch.nn.Module, prompts: list[str], state: _State
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """``group_size`` samples per prompt from the current policy.

    Returns (repeated prompts, prompt ids (N, P), response tokens (N, T), mask (N, T), responses).
    """
    repeated = [p for p in prompts for _ in range(state.config.group_size)]
    ids = state.codec.encode_batch(repeated)
    model.eval()
    tokens, mask = sample_ids(
        model,
        ids,
        eos_id=state.codec.eos_id,
        pad_id=state.codec.pad_id,
        temperature=state.config.temperature,
        generator=state.generator,
    )
    model.train()
    responses = [state.codec.decode(row) for row in tokens.tolist()]
    return repeated, ids, tokens, mask, responses


def _sft_step(
    model: torch.nn.Module, prompts: list[str], state: _State
) -> tuple[torch.Tensor, dict[str, float]]:
    ids, labels = pack(state.codec, prompts, [canonical_answer(p) for p in prompts])
    return lm_loss(model, [(ids, labels)]), {}


def _grpo_step(
    model: torch.nn.Module, prompts: list[str], state: _State
) -> tuple[torch.Tensor, dict[str, float]]:
    repeated, ids, tokens, mask, responses = _rollouts(model, prompts, state)
    g = state.config.group_size
    rewards = torch.tensor([float(is_correct(p, r)) for p, r in zip(repeated, responses, strict=True)])
    grouped = rewards.view(-1, g)  # (batch, group)
    adv = (
        (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)
    ).view(-1)
    stats = {"reward": float(rewards.mean())}
    n = len(adv)
    if state.config.kl_coef == 0:
        # Zero-advantage rollouts (groups that were all right or all wrong) add nothing to the
        # policy gradient: leave them out of the backward pass, keeping the 1/N normalisation.
        keep = adv.nonzero().squeeze(-1)
        keep = keep if len(keep) else torch.zeros(1, dtype=torch.long)  # adv[0] == 0: a zero loss
        ids, tokens, mask, adv = ids[keep], tokens[keep], mask[keep], adv[keep]
    logits = sequence_logits(model, ids, tokens)  # (n_kept, T, vocab)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)  # (n_kept, T)
    m = mask.float()
    seq_logp = (logp * m).sum(1) / m.sum(1).clamp(min=1)  # (n_kept,)
    loss = -(adv * seq_logp).sum() / n
    if state.config.kl_coef > 0 and state.reference is not None:
        with torch.no_grad():
            ref_logits = sequence_logits(state.reference, ids, tokens)
        ref_logp = torch.log_softmax(ref_logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
        log_ratio = ref_logp - logp
        kl = ((log_ratio.exp() - log_ratio - 1) * m).sum() / m.sum()  # k3 estimator of KL(pi || base)
        loss = loss + state.config.kl_coef * kl
        stats["kl"] = float(kl.detach())
    return loss, stats


def _self_distillation_step(
    model: torch.nn.Module, prompts: list[str], state: _State
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense per-token reverse KL(student(.|x, y<t) || teacher(.|c, x, y<t)) on the student's own samples."""
    repeated, ids, tokens, mask, responses = _rollouts(model, prompts, state)
    if state.config.demonstration == "canonical":
        demos = [canonical_answer(p) for p in repeated]
    else:
        demos = [str(state.rng.choice(correct_answers(p))) for p in repeated]
    teacher_ids = state.codec.encode_batch(
        [demonstration_prompt(p, d) for p, d in zip(repeated, demos, strict=True)]
    )
    assert state.reference is not None
    with torch.no_grad():
        teacher_logp = torch.log_softmax(
            sequence_logits(state.reference, teacher_ids, tokens), -1
        )  # (N, T, V)
    student_logp = torch.log_softmax(sequence_logits(model, ids, tokens), -1)  # (N, T, V)
    kl = (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)  # (N, T)
    m = mask.float()
    loss = (kl * m).sum() / m.sum()
    reward = np.mean([is_correct(p, r) for p, r in zip(repeated, responses, strict=True)])
    return loss, {"reward": float(reward), "reverse_kl": float(loss.detach())}


def _ema_update(model: torch.nn.Module, state: _State) -> None:
    assert state.reference is not None
    rate = state.config.ema_rate
    with torch.no_grad():
        for t, s in zip(state.reference.parameters(), model.parameters(), strict=True):
            t.lerp_(s, rate)


def train_sft(
    base_dir: Path,
    out_dir: Path,
    *,
    config: ArmConfig = ArmConfig(),
    reporter: Reporter | None = None,
    progress: bool = False,
) -> ArmResult:
    """Supervised fine-tuning on one fixed correct answer per prompt (`canonical_answer`)."""
    return _run("sft", _sft_step, base_dir, out_dir, config, reporter, progress)


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
    return _run("grpo", _grpo_step, base_dir, out_dir, config, reporter, progress, reference=reference)


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
    after = _ema_update if config.teacher == "ema" else None
    return _run(
        f"self_distillation_{config.teacher}",
        _self_distillation_step,
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
