"""The experiment's arms report to forgetwatch exactly as a user's trainer would: through the client."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from drift.probes import load_probe_set
from experiment.tasks import (
    DEFAULT_SKILLS,
    PROBE_SET_SIZE,
    PROBE_SETS,
    PROBESET_DIR,
    probe_items,
    probe_set_name,
    skill_pair,
)
from forgetwatch_client import ForgetwatchClient, ForgetwatchError

METHODS = {"sft": "sft", "grpo": "grpo"}


def probe_set_files() -> list[Path]:
    return sorted(PROBESET_DIR.glob("*.jsonl"))


def register_probe_sets(client: ForgetwatchClient, skills: str = DEFAULT_SKILLS, *,
                        ood_items: int = PROBE_SET_SIZE) -> list[str]:
    """Create the shipped probe sets on the service (a no-op when they exist), and the old skill's set
    of ``ood_items`` items where that is not the shipped size; return the names of the skill pair's two
    (old skill, ``ood``; new skill, ``in_domain``)."""
    for path in probe_set_files():
        probe_set = load_probe_set(path)
        items = [{"prompt": i.prompt, "reference": i.reference, "answer": i.answer} for i in probe_set.items]
        client.probe_set(probe_set.name, probe_set.domain, items)
    old, new = skill_pair(skills)
    if ood_items != PROBE_SET_SIZE:
        client.probe_set(probe_set_name(old, ood_items), PROBE_SETS[old][1], probe_items(old, ood_items))
    return [probe_set_name(old, ood_items), PROBE_SETS[new][0]]


def method_of(arm: str) -> str:
    return METHODS.get(arm, "self_distillation")


def register_run(url: str, token: str, *, run_name: str, arm: str, base_dir: Path, probe_sets: list[str],
                 tags: dict[str, str | float | int]) -> None:
    """Register the run in blocking mode, so that a refused run (a base outside the service's checkpoint
    roots, a token of another project) stops the experiment with the service's reason before training,
    rather than after it with every call of the run dropped by the background delivery."""
    with ForgetwatchClient(url, token, blocking=True) as client:
        try:
            client.run(run_name, base_model=str(base_dir), method=method_of(arm), probe_sets=probe_sets,
                       tags={"arm": arm, **tags})
        except ForgetwatchError as error:
            raise SystemExit(f"python -m experiment: the service refused run {run_name}: {error}") from error


class ServiceReporter:
    """Registers every checkpoint (the base as step 0), its ground-truth labels, the samples and the
    training statistics."""

    def __init__(self, client: ForgetwatchClient, *, arm: str, run_name: str, base_dir: Path,
                 probe_sets: list[str], tags: dict[str, str | float | int]) -> None:
        self.client = client
        client.run(run_name, base_model=str(base_dir), method=method_of(arm), probe_sets=probe_sets,
                   tags={"arm": arm, **tags})
        self.steps: list[int] = []

    def on_checkpoint(self, step: int, path: Path, labels: dict[str, float]) -> None:
        self.client.checkpoint(step, str(path))
        self.client.labels(step, labels)
        self.steps.append(step)

    def on_metrics(self, step: int, values: dict[str, float]) -> None:
        self.client.metrics(step, values)

    def on_samples(self, step: int, items: list[dict[str, str]]) -> None:
        by_set: dict[str, list[dict[str, str]]] = defaultdict(list)
        for item in items:
            by_set[item["probe_set"]].append({"prompt": item["prompt"], "response": item["response"]})
        for probe_set, rows in by_set.items():
            self.client.samples(step, rows, probe_set=probe_set)
