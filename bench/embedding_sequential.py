"""Run-level false alarms and power of the sequential (betting) shift test on MiniLM embeddings.

    python -m bench.embedding_sequential [--null-runs 400] [--shift-runs 80] [--n-per-ckpt 32] [--tuning]

Texts: the corpus of `bench.embedding_shift` (ordinary answers; a degraded register to mix in),
generated with a different seed (held-out text: the test's settings were chosen on that module's
seed-0 corpus; ``--tuning`` runs on that corpus instead, which is where the settings were chosen:
figures from the default, held-out run are the ones to quote). A run has 20 checkpoints; at each, ``n`` reference and ``n`` current responses are
drawn without replacement from the pools and paired by row; a "p % shift" replaces p % of every
checkpoint's current responses with the degraded kind, from the first checkpoint on.
`drift.sequential.sequential_shift_test` runs over the checkpoints; a run alarms once its e-value
reaches 1/alpha = 20 at a checkpoint's end.

For scale, the same draws are also tested one checkpoint at a time with `embedding_shift_test`
(alpha 0.05, no correction across checkpoints: the run-level false-alarm rate of that practice).
Last line: ``embedding_sequential n_per_ckpt=N run_fpr=F power20_by_ckpt5=P power10_by_ckpt10=Q``.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.embedding_shift import REFERENCE_TEMPLATES, SHIFTED_TEMPLATES, corpus
from drift.embeddings import MiniLMEmbedder
from drift.sequential import sequential_shift_test
from drift.shift import embedding_shift_test

CHECKPOINTS = 20
ALPHA = 0.05


def draw_run(pool_a: np.ndarray, pool_b: np.ndarray, share: float, n: int, rng: np.random.Generator):
    rows = rng.choice(len(pool_a), size=2 * n * CHECKPOINTS, replace=False)
    batches = []
    for c in range(CHECKPOINTS):
        take = rows[2 * n * c : 2 * n * (c + 1)]
        reference, current = pool_a[take[:n]], pool_a[take[n:]].copy()
        n_shift = round(share * n)
        if n_shift:
            current[:n_shift] = pool_b[rng.choice(len(pool_b), size=n_shift, replace=False)]
        batches.append((reference, current[rng.permutation(n)]))
    return batches


def first_alarms(
    pool_a, pool_b, share: float, runs: int, n: int, *, single: bool
) -> tuple[np.ndarray, np.ndarray]:
    """1-based checkpoint of each run's first alarm (CHECKPOINTS + 1 = never): sequential, single."""
    never = CHECKPOINTS + 1
    sequential, per_checkpoint = np.full(runs, never), np.full(runs, never)
    for seed in range(runs):
        batches = draw_run(pool_a, pool_b, share, n, np.random.default_rng([int(share * 100), seed]))
        result = sequential_shift_test(batches, alpha=ALPHA)
        if result.first_detection is not None:
            sequential[seed] = result.first_detection + 1
        if single:
            for c, (x, y) in enumerate(batches):
                if embedding_shift_test(
                    x, y, alpha=ALPHA, n_permutations=200, random_state=seed
                ).drift_detected:
                    per_checkpoint[seed] = c + 1
                    break
    return sequential, per_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--null-runs", type=int, default=400)
    parser.add_argument("--shift-runs", type=int, default=80)
    parser.add_argument("--n-per-ckpt", type=int, default=32)
    parser.add_argument("--single", action="store_true", help="also test each checkpoint on its own")
    parser.add_argument("--tuning", action="store_true", help="bench.embedding_shift's seed-0 (tuning) corpus")
    args = parser.parse_args()

    rng = np.random.default_rng(0 if args.tuning else 1)  # held out: bench.embedding_shift uses seed 0
    texts_a, texts_b = corpus(REFERENCE_TEMPLATES, 2000, rng), corpus(SHIFTED_TEMPLATES, 500, rng)
    embedder = MiniLMEmbedder.load()
    pool_a, pool_b = embedder.embed(texts_a), embedder.embed(texts_b)
    rates = {}
    for share, runs in ((0.0, args.null_runs), (0.1, args.shift_runs), (0.2, args.shift_runs)):
        sequential, single = first_alarms(pool_a, pool_b, share, runs, args.n_per_ckpt, single=args.single)
        by = {c: float(np.mean(sequential <= c)) for c in (1, 2, 3, 5, 8, 10, 15, 20)}
        rates[share] = by
        print(
            f"sequential shift={share:.0%} runs={runs} alarmed_by_ckpt "
            + " ".join(f"{c}:{v:.3f}" for c, v in by.items()),
            flush=True,
        )
        if args.single:
            print(
                f"per-checkpoint shift={share:.0%} runs={runs} alarmed_by_ckpt "
                + " ".join(f"{c}:{np.mean(single <= c):.3f}" for c in by),
                flush=True,
            )
    print(
        f"embedding_sequential{'_tuning' if args.tuning else ''} n_per_ckpt={args.n_per_ckpt} run_fpr={rates[0.0][CHECKPOINTS]:.3f} "
        f"power20_by_ckpt5={rates[0.2][5]:.2f} power10_by_ckpt10={rates[0.1][10]:.2f}"
    )


if __name__ == "__main__":
    main()
