"""The budget and hyper-parameters of one training arm, shared by the arms and their objectives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from experiment.tasks import DEFAULT_SKILLS, PROBE_SET_SIZE, label_items, skill_pair


@dataclass(frozen=True)
class ArmConfig:
    """Budget and hyper-parameters of one arm; fields an arm does not use are ignored."""

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 16
    """Prompts per step."""
    seed: int = 0
    checkpoint_every: int = 50
    first_checkpoints: tuple[int, ...] = ()
    """Extra checkpoint steps besides every ``checkpoint_every``, e.g. ``(2, 4, 6, 8)``: runs that
    forget within their first regular checkpoint still show the run-up a forecast needs."""
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
    """Held-out prompts per task for the ground-truth labels."""
    ood_probe_items: int = PROBE_SET_SIZE
    """Items in the old skill's (ood) probe set the service measures; the labels are the ``n_eval``
    held-out items after them, so the two never overlap."""
    n_samples: int = 16
    """Responses per probe set passed to ``reporter.on_samples`` at each checkpoint."""
    max_grad_norm: float = 1.0
    skills: str = DEFAULT_SKILLS
    """The skill pair (`experiment.tasks.SKILL_PAIRS`): its new task is trained, both are labelled."""

    def __post_init__(self) -> None:
        skill_pair(self.skills)
        if self.steps < 1 or self.checkpoint_every < 1 or self.batch_size < 1 or self.group_size < 1:
            raise ValueError(f"steps, checkpoint_every, batch_size and group_size must be >= 1: {self}")
        if any(not 1 <= s <= self.steps for s in self.first_checkpoints):
            raise ValueError(f"first_checkpoints must be steps between 1 and {self.steps}, got {self.first_checkpoints}")
        if self.ood_probe_items < PROBE_SET_SIZE:
            raise ValueError(f"ood_probe_items must be at least {PROBE_SET_SIZE}, got {self.ood_probe_items}")
        label_items(skill_pair(self.skills)[0], self.n_eval, after=self.ood_probe_items)  # probes + labels fit the pool
        if not self.lr > 0 or self.n_eval < 1 or self.n_samples < 0:
            raise ValueError(f"lr and n_eval must be positive and n_samples >= 0: {self}")
        if self.teacher not in ("frozen", "ema"):
            raise ValueError(f"teacher must be 'frozen' or 'ema', got {self.teacher!r}")
        if self.demonstration not in ("canonical", "random"):
            raise ValueError(f"demonstration must be 'canonical' or 'random', got {self.demonstration!r}")
        if not 0.0 < self.ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {self.ema_rate}")
