"""Pre-flight forgetting forecast, held out by model family.

    python -m bench.preflight [--corpus DIR] [--metric accuracy|loglik]

The corpus is a directory of multi-stage runs written by `experiment.multistage` (tiny models of the
experiment's families, pretrained on all four tasks, then fine-tuned on one task per stage); a missing
or empty directory is filled first with its defaults (3 families x 4 seeds, the README's figure;
1-4 min per run on one CPU core). A pair is (run, stage k, retention set p), p every task but stage k's own:

- measured loss: ``relative_drop(R[k−1, p], R[k, p])`` on ``--metric`` (accuracy by default, as the
  service uses; pairs whose start accuracy is below ``--min-start``, 0.2, are left out: a skill the
  model does not have cannot be forgotten, and a ratio to a near-0 start is noise);
- distance: `drift.preflight.domain_distance` between the MiniLM embeddings of the stage's sampled
  training prompts (the preview) and of p's held-out probe prompts, as the service computes it.

For each family, `fit_forgetting_curve` is fitted on every pair of the other families and predicts
that family's pairs. Printed: the held-out Spearman, MAE and interval coverage; the same for the
documented prior alone and for the service's own setting (each stage predicted from the run's earlier
stages, the prior for the first); the curve fitted on all pairs and whether it is an inverted U. The
last line: ``preflight pairs=… spearman=… mae=…`` (held out by family).

Measured on 12 runs (3 families x 4 seeds): ``preflight pairs=94 spearman=-0.262 mae=0.364``; the
distance alone against the loss has Spearman 0.095 and no inverted U appears (README, Benchmarks).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from drift.embeddings import MiniLMEmbedder
from drift.preflight import Forecast, domain_distance, fit_forgetting_curve, predict_forgetting
from drift.transfer import relative_drop

DEFAULT_CORPUS = Path.home() / ".cache" / "forgetwatch" / "preflight-corpus"


@dataclass(frozen=True)
class Pair:
    run: str
    family: str
    stage: int  # 1-based position
    probe_set: str
    distance: float
    loss: float


def load_pairs(corpus: Path, *, metric: str, embedder: MiniLMEmbedder, min_start: float = 0.0) -> list[Pair]:
    """Every (run, stage, retention set) pair of the corpus with its distance and measured loss; a pair
    whose start score is below ``min_start`` (accuracy: a skill the model does not have) is left out."""
    cache: dict[tuple[str, ...], np.ndarray] = {}

    def embed(texts: Sequence[str]) -> np.ndarray:
        key = tuple(texts)
        if key not in cache:
            cache[key] = embedder.embed(list(texts))
        return cache[key]

    pairs = []
    for path in sorted(corpus.glob("*.json")):
        run = json.loads(path.read_text())
        tasks, rows = run["tasks"], run[metric]
        for k, stage in enumerate(run["stages"], start=1):
            preview = embed(stage["prompts"])
            for j, task in enumerate(tasks):
                if task == stage["task"]:
                    continue
                loss = relative_drop(rows[k - 1][j], rows[k][j])
                if loss is None or (metric == "accuracy" and rows[k - 1][j] < min_start):
                    continue
                distance = domain_distance(preview, embed(run["probe_prompts"][task])).mmd
                pairs.append(Pair(path.stem, run["family"], k, task, distance, loss))
    return pairs


def _score(pairs: Sequence[Pair], forecasts: Sequence[Forecast]) -> dict[str, float]:
    measured = np.array([p.loss for p in pairs])
    predicted = np.array([f.loss for f in forecasts])
    inside = [f.ci_low <= p.loss <= f.ci_high for p, f in zip(pairs, forecasts, strict=True)]
    rho = spearmanr(predicted, measured).statistic if np.ptp(predicted) > 0 else float("nan")
    return {"pairs": len(pairs), "spearman": float(rho), "mae": float(np.mean(np.abs(predicted - measured))),
            "coverage": float(np.mean(inside))}


def held_out_by_family(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Forecast]]:
    order, out = [], []
    for family in sorted({p.family for p in pairs}):
        train = [p for p in pairs if p.family != family]
        test = [p for p in pairs if p.family == family]
        curve = fit_forgetting_curve([p.distance for p in train], [p.loss for p in train])
        order += test
        out += predict_forgetting(curve, [p.distance for p in test])
    return order, out


def from_run_history(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Forecast]]:
    """The service's setting: stage k of a run predicted from the run's stages before k."""
    order, out = [], []
    for p in pairs:
        history = [h for h in pairs if h.run == p.run and h.stage < p.stage]
        curve = fit_forgetting_curve([h.distance for h in history], [h.loss for h in history])
        order.append(p)
        out += predict_forgetting(curve, [p.distance])
    return order, out


def _line(name: str, found: dict[str, float]) -> str:
    return (f"{name}: pairs={found['pairs']} spearman={found['spearman']:.3f} mae={found['mae']:.3f} "
            f"coverage90={found['coverage']:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--metric", choices=("accuracy", "loglik"), default="accuracy")
    parser.add_argument("--min-start", type=float, default=0.2,
                        help="leave out accuracy pairs whose start is below this (nothing there to forget)")
    args = parser.parse_args(argv)
    if not any(args.corpus.glob("*.json")):
        from experiment.model import FAMILIES
        from experiment.multistage import write_corpus

        print(f"building the corpus in {args.corpus} (python -m experiment.multistage)", flush=True)
        write_corpus(args.corpus, sorted(FAMILIES), range(4))
    pairs = load_pairs(args.corpus, metric=args.metric, embedder=MiniLMEmbedder.load(), min_start=args.min_start)
    families = sorted({p.family for p in pairs})
    if len(families) < 2:
        raise SystemExit(f"held out by family needs runs of 2 families or more in {args.corpus}, got {families}")
    runs = sorted({p.run for p in pairs})
    print(f"corpus {args.corpus}: {len(runs)} runs, families {families}, metric {args.metric}")
    distances = np.array([p.distance for p in pairs])
    print(f"distances: min={distances.min():.3f} median={np.median(distances):.3f} max={distances.max():.3f}")
    raw = spearmanr(distances, [p.loss for p in pairs]).statistic
    print(f"distance vs measured loss over all pairs: spearman={raw:.3f}")
    prior = fit_forgetting_curve([], [])
    print(_line("prior only", _score(pairs, predict_forgetting(prior, distances.tolist()))))
    print(_line("run history (the service's setting)", _score(*from_run_history(pairs))))
    pooled = fit_forgetting_curve(distances.tolist(), [p.loss for p in pairs])
    c0, c1, c2 = pooled.coefficients
    shape = (f"an inverted U peaking at MMD {pooled.peak_distance:.3f}" if pooled.inverted_u
             else "not an inverted U over the observed distances")
    print(f"curve on all pairs: loss = {c0:.3f} + {c1:.3f} d + {c2:.3f} b(d; mu={pooled.peak_scale}) "
          f"(noise sd {pooled.noise_sd:.3f}): {shape}")
    found = _score(*held_out_by_family(pairs))
    print(_line("held out by family", found))
    print(f"preflight pairs={found['pairs']} spearman={found['spearman']:.3f} mae={found['mae']:.3f}")


if __name__ == "__main__":
    main()
