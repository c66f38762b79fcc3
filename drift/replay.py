"""A labelled run as the service measured it, replayed through the alarms checkpoint by checkpoint.

A `RunRecord` holds what the held-out evaluation needs and nothing the service would not have had:
per checkpoint after the base, its step, the worst ood probe set's relative drop with its
paired-bootstrap interval, and the ood KL; the base's ood entropy; and the ground truth the trainer
posted (measured on items that are not probe items). It also keeps every ood probe set's paired
scores (accuracy and reference log-likelihood: base, change, interval), so another forecast can be
tried on a stored corpus. `replay` turns it into the `RunTrace` that
`drift.evaluation` scores, each forecast from the checkpoints up to it only.

Records are plain JSON (`dump_records` / `load_records`), so a corpus that took an hour to build can
be evaluated again, with another forecast or threshold rule, without rebuilding it: `python -m
bench.risk_heldout --records FILE`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from drift.alarms import RelativeDrop, drop_sd, forecast_detection
from drift.evaluation import RunTrace
from drift.features import kl_entropy_share
from drift.risk import forgetting_onset

FORMAT = "forgetwatch.run_records/1"


@dataclass(frozen=True)
class RunRecord:
    run: str
    family: str
    method: str
    steps: tuple[int, ...]
    drops: tuple[RelativeDrop | None, ...]
    kl: tuple[float | None, ...]
    base_entropy: float | None
    label_base: float
    labels: tuple[float | None, ...]
    probe_scores: tuple[tuple[dict[str, Any], ...], ...] = ()
    """Per checkpoint, each ood probe set's ``{"probe_set", "n_items", "accuracy", "loglik"}``, the
    last two as ``[base, change, ci_low, ci_high]`` (`service.db.features.OodProbeResult`)."""

    def __post_init__(self) -> None:
        if self.probe_scores and len(self.probe_scores) != len(self.steps):
            raise ValueError(f"run {self.run}: probe scores for {len(self.probe_scores)} of {len(self.steps)} checkpoints")
        if not len(self.steps) == len(self.drops) == len(self.kl) == len(self.labels):
            raise ValueError(f"run {self.run}: per-checkpoint sequences differ in length")


def replay(record: RunRecord, *, relative_drop: float, horizon: int) -> RunTrace:
    """What the service's detection and forecast said at each checkpoint, and the ground truth's onset."""
    steps, drops = list(record.steps), list(record.drops)
    forecast = [forecast_detection(steps[:i + 1], drops[:i + 1], threshold=relative_drop, horizon=horizon).probability
                for i in range(len(steps))]
    entropy = record.base_entropy
    return RunTrace(
        run=record.run, family=record.family, method=record.method, forecast=tuple(forecast),
        detected=tuple(d is not None and d.low >= relative_drop for d in drops),
        drop=tuple(None if d is None else d.drop for d in drops),
        kl_share=tuple(None if k is None or entropy is None or k < 0 else kl_entropy_share(k, entropy)
                       for k in record.kl),
        onset=forgetting_onset(list(record.labels), base=record.label_base, relative_drop=relative_drop),
        drop_sd=tuple(None if d is None else drop_sd(d) for d in drops),
    )


def dump_records(records: Sequence[RunRecord], path: Path) -> None:
    """Write ``records`` as JSON (gzip-compressed when ``path`` ends in ``.gz``)."""
    document = {"format": FORMAT, "runs": [asdict(r) for r in records]}
    text = json.dumps(document, separators=(",", ":"), sort_keys=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text + "\n")


def load_records(path: Path) -> list[RunRecord]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        document = json.load(f)
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} document")
    return [RunRecord(run=r["run"], family=r["family"], method=r["method"], steps=tuple(r["steps"]),
                      drops=tuple(None if d is None else RelativeDrop(**d) for d in r["drops"]),
                      kl=tuple(r["kl"]), base_entropy=r["base_entropy"], label_base=r["label_base"],
                      labels=tuple(r["labels"]),
                      probe_scores=tuple(tuple(scores) for scores in r.get("probe_scores", ())))
            for r in document["runs"]]
