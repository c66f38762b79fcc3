"""A multi-stage continual-learning corpus of tiny models, for the pre-flight forecast bench.

Per (model family, seed): a base is pretrained by SFT on all four tasks at once (`TASKS`), then
fine-tuned stage by stage on one task each, in a seeded random order; after the base and after every
stage the greedy accuracy and the mean answer log-likelihood (nats/token) are measured on every
task's held-out probe items. Row 0 is the base, row k the end of stage k: the transfer matrix R of
`drift.transfer`. Each stage also keeps a sample of its training prompts (the "preview" a trainer
would post). Every task was learned in pretraining, so every other task is a retention set of every
stage.

One run is one JSON file ``<family>-seed<seed>.json`` in the corpus directory:
``{"family", "seed", "tasks", "probe_prompts": {task: [...]}, "stages": [{"task", "prompts"}],
"accuracy": [[row 0 per task], ...], "loglik": [[...], ...], "wall_seconds"}``.

    python -m experiment.multistage --out DIR [--families ...] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from experiment.model import FAMILIES, Codec, accuracy, build_model, build_tokenizer, family_config
from experiment.pretrain import lm_loss, pack
from experiment.tasks import TASKS, canonical_answer, probe_items, sample_prompts


@dataclass(frozen=True)
class StageConfig:
    """Sizes of one multi-stage run; the defaults take about a minute per run on one CPU core."""

    pretrain_steps: int = 600
    pretrain_lr: float = 3e-3
    stage_steps: int = 80
    stage_lr: float = 1e-3
    batch_size: int = 48
    n_probe: int = 64
    n_preview: int = 32


def _answer_loglik(model: torch.nn.Module, codec: Codec, items: Sequence[dict[str, str]]) -> float:
    """Mean per-token log-likelihood of the reference answers (and ``<eos>``) given the prompts."""
    ids, labels = pack(codec, [i["prompt"] for i in items], [i["reference"] for i in items])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1, :]  # (batch, len - 1, vocab)
        target = labels[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
    return float(-nll / (target != -100).sum())


def _train(model: torch.nn.Module, codec: Codec, tasks: Sequence[str], *, steps: int, lr: float,
           batch_size: int, rng: np.random.Generator) -> None:
    """AdamW SFT on canonical answers of prompts drawn evenly from ``tasks``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    for _ in range(steps):
        groups = []
        for task in tasks:
            prompts = sample_prompts(task, max(1, batch_size // len(tasks)), rng)
            groups.append(pack(codec, prompts, [canonical_answer(p) for p in prompts]))
        loss = lm_loss(model, groups)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def run_stages(family: str, seed: int, config: StageConfig = StageConfig()) -> dict[str, object]:
    """One run of the corpus (see the module docstring)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 17])
    model_config = family_config(family)
    codec = Codec(build_tokenizer(model_config.tokenizer))
    model = build_model(model_config, seed=seed)
    probes = {t: probe_items(t, config.n_probe) for t in TASKS}

    def measure() -> tuple[list[float], list[float]]:
        return ([accuracy(model, codec, [i["prompt"] for i in probes[t]]) for t in TASKS],
                [_answer_loglik(model, codec, probes[t]) for t in TASKS])

    _train(model, codec, TASKS, steps=config.pretrain_steps, lr=config.pretrain_lr, batch_size=config.batch_size,
           rng=rng)
    acc, ll = measure()
    rows_acc, rows_ll = [acc], [ll]
    stages = []
    for task in rng.permutation(list(TASKS)).tolist():
        stages.append({"task": task, "prompts": sample_prompts(task, config.n_preview, rng)})
        _train(model, codec, [task], steps=config.stage_steps, lr=config.stage_lr, batch_size=config.batch_size,
               rng=rng)
        acc, ll = measure()
        rows_acc.append(acc)
        rows_ll.append(ll)
    return {"family": family, "seed": seed, "tasks": list(TASKS),
            "probe_prompts": {t: [i["prompt"] for i in probes[t]] for t in TASKS}, "stages": stages,
            "accuracy": rows_acc, "loglik": rows_ll, "wall_seconds": time.perf_counter() - start}


def write_corpus(out: Path, families: Sequence[str], seeds: Sequence[int], config: StageConfig = StageConfig(),
                 *, threads: int = 1) -> list[Path]:
    """Run every (family, seed) not in ``out`` yet and write its JSON file; returns every run's path."""
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    paths = []
    for family in families:
        for seed in seeds:
            path = out / f"{family}-seed{seed}.json"
            if not path.is_file():
                found = run_stages(family, seed, config)
                path.write_text(json.dumps(found))
                print(f"{path.name}: {found['wall_seconds']:.0f} s, base accuracy {found['accuracy'][0]}", flush=True)
            paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    write_corpus(args.out, args.families, range(args.seeds), threads=args.threads)


if __name__ == "__main__":
    main()
