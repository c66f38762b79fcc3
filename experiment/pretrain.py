"""Pretraining the base model on the old skill, cached on disk by config and seed.

The pretraining mixture is mostly the old task (e.g. addition), plus two kinds of new-task data that
carry no information about the new task's rule but give the base what a pretrained LLM brings to
post-training: ``"B:dgbe>qz"`` with a random answer in the new task's format teaches the format (so
sampling from the base hits a correct letters answer about 1 time in 12 and GRPO gets a learning
signal), and ``"B:dgbe>qz;B:dgbe>qz"`` teaches copying an in-context example (so a model shown a
demonstration can act as the SDFT teacher).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from experiment.model import (
    Codec,
    ModelConfig,
    accuracy,
    build_model,
    build_tokenizer,
    generate,
    load_checkpoint,
    save_checkpoint,
)
from experiment.tasks import (
    DEFAULT_SKILLS,
    canonical_answer,
    demonstration_prompt,
    probe_items,
    random_answer,
    sample_prompts,
    skill_pair,
)

CACHE_VERSION = 1
STATS_FILE = "forgetwatch_base.json"


@dataclass(frozen=True)
class BaseConfig:
    """How the base model is pretrained; every field is part of the cache key."""

    model: ModelConfig = field(default_factory=ModelConfig)
    max_steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    letter_format_fraction: float = 0.1
    letter_copy_fraction: float = 0.25
    eval_every: int = 100
    target_accuracy: float = 0.98
    """Stop once greedy addition accuracy on 256 training prompts reaches this ..."""
    target_copy_accuracy: float = 0.95
    """... and greedy copying of an in-context new-task answer (see `copy_accuracy`) reaches this."""
    skills: str = DEFAULT_SKILLS
    """The skill pair (`experiment.tasks.SKILL_PAIRS`): the base learns its old task."""

    def __post_init__(self) -> None:
        skill_pair(self.skills)  # a clear error for an unknown pair, before any training

    def cache_key(self, seed: int) -> str:
        payload = json.dumps({"v": CACHE_VERSION, "seed": seed, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BaseResult:
    path: Path
    cached: bool
    """True when an earlier run's base was reused."""
    wall_seconds: float
    """Time spent pretraining in this call (0 when cached)."""
    stats: dict[str, float]
    """``steps``, ``loss``, ``train_accuracy`` and held-out ``ood_accuracy`` from pretraining."""


def pack(codec: Codec, prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + answer + <eos>`` ids and labels (-100 except on answer and ``<eos>``).

    Returns ``input_ids`` and ``labels``, both (batch, max_len).
    """
    encoded = [codec.encode(p) for p in prompts]
    rows = [e + codec.encode(a) + [codec.eos_id] for e, a in zip(encoded, answers, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), codec.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, e) in enumerate(zip(rows, encoded, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(e) : len(row)] = ids[i, len(e) : len(row)]
    return ids, labels


def pretrain_batch(
    codec: Codec, config: BaseConfig, rng: np.random.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One pretraining batch of the mixture (see the module docstring).

    Returned as (input_ids, labels) groups of similar length, so short sequences are not padded to
    the length of the copy examples.
    """
    n_format = rng.binomial(config.batch_size, config.letter_format_fraction)
    n_copy = rng.binomial(config.batch_size - n_format, config.letter_copy_fraction)
    n_old = config.batch_size - n_format - n_copy
    old, new = skill_pair(config.skills)
    prompts = sample_prompts(old, n_old, rng)
    answers = [canonical_answer(p) for p in prompts]
    for p in sample_prompts(new, n_format, rng):
        prompts.append(p)
        answers.append(random_answer(new, rng))
    groups = [pack(codec, prompts, answers)]
    if n_copy:
        copy_prompts, copy_answers = [], []
        for p in sample_prompts(new, n_copy, rng):
            demo = random_answer(new, rng)
            copy_prompts.append(demonstration_prompt(p, demo))
            copy_answers.append(demo)
        groups.append(pack(codec, copy_prompts, copy_answers))
    return groups


def lm_loss(model: torch.nn.Module, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean next-token cross-entropy over all labelled tokens of all groups."""
    total = torch.zeros(())
    count = 0
    for ids, labels in groups:
        logits = model(input_ids=ids).logits[:, :-1, :]  # (batch, len - 1, vocab)
        target = labels[:, 1:]
        total = total + F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        )
        count += int((target != -100).sum())
    return total / max(count, 1)


def copy_accuracy(
    model: torch.nn.Module, codec: Codec, prompts: list[str], rng: np.random.Generator, *, task: str
) -> float:
    """How often the model, shown ``"B:dgbe>qz;B:dgbe>"`` with a random answer ``qz`` of the new
    ``task``'s format, answers ``qz``."""
    demos = [random_answer(task, rng) for _ in prompts]
    responses = generate(
        model, codec, [demonstration_prompt(p, d) for p, d in zip(prompts, demos, strict=True)]
    )
    return float(np.mean([r == d for r, d in zip(responses, demos, strict=True)]))


def _lr_at(step: int, config: BaseConfig) -> float:
    if step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * t)))


def pretrain(
    out_dir: Path,
    *,
    config: BaseConfig = BaseConfig(),
    seed: int = 0,
    progress: bool = False,
) -> tuple[Path, dict[str, float]]:
    """Train a base from scratch and ``save_pretrained`` it to ``out_dir``.

    AdamW with linear warm-up and cosine decay to 10 % over ``max_steps``, stopping early once
    old-task accuracy reaches ``config.target_accuracy``. Returns the path and ``{"steps", "loss", "train_accuracy"}``.
    """
    rng = np.random.default_rng(seed)
    tokenizer = build_tokenizer(config.model.tokenizer)
    codec = Codec(tokenizer)
    model = build_model(config.model, seed=seed)
    old, new = skill_pair(config.skills)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    check_rng = np.random.default_rng([seed, 1])
    check_prompts = sample_prompts(old, 256, check_rng)
    copy_prompts = sample_prompts(new, 128, check_rng)
    ema_loss, train_acc, copy_acc, step = float("nan"), 0.0, 0.0, 0
    bar = tqdm(range(1, config.max_steps + 1), desc="pretrain", disable=not progress, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = lm_loss(model, pretrain_batch(codec, config, rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_loss = loss.item() if step == 1 else 0.9 * ema_loss + 0.1 * loss.item()
        if step % config.eval_every == 0:
            train_acc = accuracy(model, codec, check_prompts)
            copy_acc = copy_accuracy(model, codec, copy_prompts, np.random.default_rng(step), task=new)
            bar.set_postfix(loss=f"{ema_loss:.3f}", old=f"{train_acc:.3f}", copy=f"{copy_acc:.3f}")
            if train_acc >= config.target_accuracy and copy_acc >= config.target_copy_accuracy:
                break
    model.eval()
    save_checkpoint(model, tokenizer, out_dir)
    stats = {
        "steps": float(step),
        "loss": float(ema_loss),
        "train_accuracy": train_acc,
        "copy_accuracy": copy_acc,
    }
    return Path(out_dir), stats


def pretrained_base(
    cache_dir: Path,
    *,
    config: BaseConfig = BaseConfig(),
    seed: int = 0,
    progress: bool = False,
) -> BaseResult:
    """The base for (config, seed): loaded from ``cache_dir/base-<key>`` or pretrained and cached.

    The folder appears atomically (trained in a temporary folder, then renamed), so concurrent
    callers never see a half-written base.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / f"base-{config.cache_key(seed)}"
    stats_file = path / STATS_FILE
    if stats_file.exists():
        return BaseResult(path=path, cached=True, wall_seconds=0.0, stats=json.loads(stats_file.read_text()))
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".base-", dir=cache_dir))
    try:
        _, stats = pretrain(tmp, config=config, seed=seed, progress=progress)
        model, tokenizer = load_checkpoint(tmp)  # measure the saved artifact, not the live object
        prompts = [it["prompt"] for it in probe_items(skill_pair(config.skills)[0], 256)]
        stats["ood_accuracy"] = accuracy(model, Codec(tokenizer), prompts)
        (tmp / STATS_FILE).write_text(json.dumps(stats))  # written last: marks the base complete
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same base first; use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BaseResult(path=path, cached=False, wall_seconds=time.perf_counter() - start, stats=stats)
