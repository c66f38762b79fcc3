"""What `forgetwatch calibrate` gains from a few runs of a family the forecast never saw.

    python -m bench.calibrate_shrinkage [--records bench/corpus/records.json.gz] [--draws 20] [--k 3 6 12]
        [--precisions 5 20 80]

For each family of the labelled runs, the served forecast's inputs (hazard/3) are fitted on the other
families: the *prior*, what the shipped model is to a user whose runs it never saw. Then, ``--draws``
times for each k, k runs of the family are drawn as the user's labelled runs and three models are
judged on the family's other runs:

* ``prior``: the model fitted on the other families, unchanged;
* ``shrunk``: the prior refitted on the k runs under a Gaussian prior centred on it (what
  `forgetwatch calibrate` does; `drift.hazard.HazardModel` with ``toward``, at `PRIOR_PRECISION` unless
  ``--precisions`` lists others);
* ``scratch``: a fit on the k runs alone (``calibrate --from-scratch``); impossible when the k runs
  hold no onset, and such draws are counted and left out of every column.

Judged on the family's runs not drawn: ``auc`` is the time-dependent AUC at horizon 3 on their risk
set (`drift.evaluation.risk_set`), ``logloss`` the mean log loss of the one-checkpoint hazard on their
risk-set rows (how well the probabilities themselves, which the alarm threshold reads, fit). Means over
families and draws. Last line, at k = the smallest ``--k`` and `PRIOR_PRECISION`:
``calibrate_shrinkage k=… draws=… prior_auc=… shrunk_auc=… scratch_auc=… prior_logloss=…
shrunk_logloss=… scratch_logloss=…``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sklearn.metrics import roc_auc_score

from drift.evaluation import RunTrace, risk_set
from drift.hazard import PRIOR_PRECISION, HazardModel, hazard_rows
from drift.replay import load_records, replay
from service.calibrate import SERVED
from service.settings import Settings

CORPUS = Path(__file__).resolve().parent / "corpus" / "records.json.gz"


@dataclass(frozen=True)
class Judged:
    auc: float | None
    logloss: float


def judge(model: HazardModel, runs: Sequence[RunTrace], *, horizon: int) -> Judged:
    """The model's AUC at ``horizon`` and its hazard's log loss on the risk set of ``runs``."""
    assert model.model is not None
    scored = [model.scored(t, horizon=horizon) for t in runs]
    y, p = [], []
    for t, i, label in risk_set(scored, horizon):
        if t.forecast[i] is not None:
            y.append(label)
            p.append(t.forecast[i])
    losses = []
    for t in runs:
        for _, x, event in hazard_rows(t, inputs=model.inputs, threshold=model.threshold):
            h, _ = model.model.probability(x, horizon=1)
            if h is not None:
                h = min(max(h, 1e-12), 1 - 1e-12)
                losses.append(-math.log(h if event else 1 - h))
    return Judged(float(roc_auc_score(y, p)) if len(set(y)) == 2 else None, statistics.fmean(losses))


def _mean(values: Sequence[float | None]) -> str:
    kept = [v for v in values if v is not None]
    return f"{statistics.fmean(kept):.3f}" if kept else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=CORPUS)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--k", type=int, nargs="+", default=[3, 6, 12])
    parser.add_argument("--precisions", type=float, nargs="+", default=[PRIOR_PRECISION])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = Settings()
    horizon, threshold = settings.forecast_horizon_checkpoints, settings.forgetting_relative_drop
    runs = [replay(r, relative_drop=threshold, horizon=horizon) for r in load_records(args.records)]
    rng = random.Random(args.seed)
    results: dict[tuple[int, str], list[Judged]] = {}
    impossible: dict[int, int] = {}
    for family in sorted({t.family for t in runs}):
        others = [t for t in runs if t.family != family]
        own = [t for t in runs if t.family == family]
        prior = HazardModel(inputs=SERVED, threshold=threshold).fit(others)
        assert prior.model is not None
        for k in args.k:
            if k > len(own) - 3:
                print(f"{family}: {len(own)} runs, too few to draw {k} and judge on the rest; skipped at k={k}")
                continue
            for _ in range(args.draws):
                drawn = set(rng.sample(range(len(own)), k))
                mine = [t for j, t in enumerate(own) if j in drawn]
                rest = [t for j, t in enumerate(own) if j not in drawn]
                try:
                    scratch = HazardModel(inputs=SERVED, threshold=threshold).fit(mine)
                except ValueError:  # no onset among the k runs' risk-set rows
                    impossible[k] = impossible.get(k, 0) + 1
                    continue
                results.setdefault((k, "prior"), []).append(judge(prior, rest, horizon=horizon))
                results.setdefault((k, "scratch"), []).append(judge(scratch, rest, horizon=horizon))
                for precision in args.precisions:
                    shrunk = HazardModel(inputs=SERVED, threshold=threshold, toward=prior.model,
                                         precision=precision).fit(mine)
                    results.setdefault((k, f"shrunk@{precision:g}"), []).append(judge(shrunk, rest, horizon=horizon))
    families = len({t.family for t in runs})
    print(f"{len(runs)} runs of {families} families; {args.draws} draws of k runs per family and k; "
          f"draws without an onset (no fit from scratch, left out): "
          + ", ".join(f"k={k}: {impossible.get(k, 0)}" for k in args.k))
    print(f"{'k':>3} {'model':<14} {'draws':>5} {'auc':>6} {'logloss':>8}")
    for (k, name), judged in sorted(results.items()):
        print(f"{k:>3} {name:<14} {len(judged):>5} {_mean([j.auc for j in judged]):>6} "
              f"{_mean([j.logloss for j in judged]):>8}")
    k = min(args.k)
    default = f"shrunk@{PRIOR_PRECISION:g}"
    if (k, default) not in results:
        raise SystemExit(f"bench.calibrate_shrinkage: no draw of k={k} at precision {PRIOR_PRECISION:g} "
                         "(add it to --precisions)")
    columns = {"prior": "prior", "shrunk": default, "scratch": "scratch"}
    line = " ".join(f"{label}_auc={_mean([j.auc for j in results[k, name]])}" for label, name in columns.items())
    line += " " + " ".join(f"{label}_logloss={_mean([j.logloss for j in results[k, name]])}"
                           for label, name in columns.items())
    print(f"calibrate_shrinkage k={k} draws={len(results[k, 'prior'])} {line}")


if __name__ == "__main__":
    main()
