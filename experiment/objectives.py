"""The loss each arm takes on a batch of task-B prompts: SFT on a fixed answer, GRPO with a 0/1
verifier reward, on-policy self-distillation; and the EMA update of the self-distillation teacher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from experiment.arm_config import ArmConfig
from experiment.model import Codec, sample_ids, sequence_logits
from experiment.pretrain import lm_loss, pack
from experiment.tasks import canonical_answer, correct_answers, demonstration_prompt, is_correct

# A step function: (model, prompts, state) -> (loss, statistics). State carries generators and models.
StepFn = Callable[[torch.nn.Module, list[str], "StepState"], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class StepState:
    """What a step needs besides the model and the prompts: the codec, the config, the random
    generators, and the reference model (when the arm has one)."""

    codec: Codec
    config: ArmConfig
    rng: np.random.Generator
    generator: torch.Generator
    reference: torch.nn.Module | None = None
    """GRPO's base for the KL term, or the self-distillation teacher."""


def rollouts(
    model: torch.nn.Module, prompts: list[str], state: StepState
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


def sft_step(
    model: torch.nn.Module, prompts: list[str], state: StepState
) -> tuple[torch.Tensor, dict[str, float]]:
    ids, labels = pack(state.codec, prompts, [canonical_answer(p) for p in prompts])
    return lm_loss(model, [(ids, labels)]), {}


def grpo_step(
    model: torch.nn.Module, prompts: list[str], state: StepState
) -> tuple[torch.Tensor, dict[str, float]]:
    repeated, ids, tokens, mask, responses = rollouts(model, prompts, state)
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


def self_distillation_step(
    model: torch.nn.Module, prompts: list[str], state: StepState
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense per-token reverse KL(student(.|x, y<t) || teacher(.|c, x, y<t)) on the student's own samples."""
    repeated, ids, tokens, mask, responses = rollouts(model, prompts, state)
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
    return loss, {"reward": float(reward), "teacher_student_divergence": float(loss.detach())}


def ema_update(model: torch.nn.Module, state: StepState) -> None:
    assert state.reference is not None
    rate = state.config.ema_rate
    with torch.no_grad():
        for t, s in zip(state.reference.parameters(), model.parameters(), strict=True):
            t.lerp_(s, rate)
