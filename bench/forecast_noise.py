"""How the forgetting forecast behaves on probe sets of every size and noise: synthetic runs, known truth.

    python -m bench.forecast_noise [--runs 40] [--trend [--alarm P] | --hazard hazard/N]

The corpus behind the shipped threshold (`make corpus`) has one ood probe-set size (256 items) and
little answer churn. A user's probe set may have 16 items or 1000, and a healthy fine-tune flips
some greedy answers both ways at every checkpoint. This bench asks what the forecast does there,
through the functions the service uses (`drift.paired` for each checkpoint's paired-bootstrap
interval, `drift.alarms` for detection and forecast), on runs whose truth is known:

* per item, the base is right with probability ``base_accuracy``; at each checkpoint an item the
  base got right is lost with probability ``churn + forgetting`` and one it got wrong is gained with
  probability ``churn`` (fresh draws per checkpoint: answers near the model's decision boundary);
* quiet runs: ``forgetting = 0``, churn 0, 2 % or 5 % (with a 90 % base a 5 % churn is a steady
  true drop of 4.4 %: real, below the threshold, never crossing it);
* forgetting runs: churn 1 %, and from a random checkpoint (2-7) on, ``forgetting`` grows by 2, 4
  or 8 points per checkpoint; onset is the first checkpoint whose *true* expected relative drop
  reaches the threshold.

Per cell (probe-set size x base accuracy), 15 checkpoints per run, an alarm is a forecast at or
above the threshold: by default the served forecast (the forecast model and threshold in force,
`drift.hazard.hazard_forecast`); with ``--trend`` the unfitted trend/1 at ``--alarm`` (its no-change
ceiling by default); with ``--hazard INPUTS`` a `drift.hazard` model refitted on the shipped corpus
(``bench/corpus/records.json.gz``), alarming at the conformal threshold of the corpus's non-forgetting
runs, each scored by a model fitted without it. Either way: how a forecast fitted on that corpus meets
probe noise it never saw.
* ``quiet_alarm``: share of quiet runs that ever alarm (a false alarm), then per churn level;
* ``applicable``: share of the quiet runs' checkpoints that get a forecast at all;
* ``early2``: share of forgetting runs with onset at or after their 3rd checkpoint alarmed at least 2
  checkpoints before onset;
* ``detected_by_onset+1``: share of forgetting runs detected (`first_detection`) by onset + 1.

The last line pools the cells of 32 items and more:
``forecast_noise quiet_alarm_runs=… early2_share=… applicable_share=… runs=…``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drift.alarms import (
    CrossingForecast,
    RelativeDrop,
    drop_sd,
    forecast_detection,
    no_change_ceiling,
    relative_drop,
)
from drift.evaluation import RunTrace, conformal_threshold
from drift.hazard import HazardModel, Inputs
from drift.paired import paired_bootstrap_change
from drift.replay import load_records, replay
from service.settings import Settings

CORPUS = Path(__file__).resolve().parent / "corpus" / "records.json.gz"
#: The score of a run's latest checkpoint from its checkpoints so far and their trend forecasts (None: abstains).
Score = Callable[[Sequence[RelativeDrop], Sequence[float | None]], float | None]

CHECKPOINTS = 15
SIZES = (16, 32, 64, 256)
BASE_ACCURACIES = (0.5, 0.9)
QUIET_CHURN = (0.0, 0.02, 0.05)
RATES = (0.02, 0.04, 0.08)


@dataclass(frozen=True)
class Outcome:
    first_alarm: int | None
    detected: int | None
    onset: int | None
    forecasts: int
    checkpoints: int


def model_score(model: HazardModel, *, horizon: int) -> Score:
    """``model`` as a `Score`: its probability at a run's latest checkpoint."""

    def score(drops: Sequence[RelativeDrop], forecasts: Sequence[float | None]) -> float | None:
        n = len(drops)
        trace = RunTrace("synthetic", "synthetic", "synthetic", tuple(forecasts), (False,) * n,
                         tuple(d.drop for d in drops), (0.0,) * n, None, tuple(drop_sd(d) for d in drops))
        return model.within(trace, horizon=horizon, through_onset=True).get(n - 1)

    return score


def hazard_score(inputs: Inputs, *, threshold: float, horizon: int) -> tuple[Score, float]:
    """A hazard model fitted on the shipped corpus, as a `Score`, and its conformal alarm threshold."""
    traces = [replay(r, relative_drop=threshold, horizon=horizon) for r in load_records(CORPUS)]
    model = HazardModel(inputs=inputs, threshold=threshold).fit(traces)
    maxima = []
    for run in (t for t in traces if t.onset is None):
        scores = HazardModel(inputs=inputs, threshold=threshold).fit([t for t in traces if t is not run]) \
            .within(run, horizon=horizon, through_onset=True)
        maxima.append(max(scores.values(), default=0.0))
    alarm = conformal_threshold(maxima, alpha=0.10)
    if alarm is None:
        raise SystemExit("bench.forecast_noise: the corpus has too few non-forgetting runs for a threshold")
    return model_score(model, horizon=horizon), alarm


def simulate(rng: np.random.Generator, *, items: int, base_accuracy: float, churn: float, start: int | None,
             rate: float, threshold: float, alarm: float, score: Score | None = None) -> Outcome | None:
    """One run through detection and forecast, checkpoint by checkpoint (None: a base with no right answer)."""
    base = (rng.random(items) < base_accuracy).astype(np.float64)
    if base.sum() == 0:
        return None
    steps: list[float] = []
    drops: list[RelativeDrop] = []
    forecasts: list[float | None] = []
    first_alarm = detected = onset = None
    applicable = 0
    for t in range(1, CHECKPOINTS + 1):
        forgetting = rate * max(0, t - start) if start is not None else 0.0
        lose, gain = min(1.0, churn + forgetting), churn
        true_drop = (base.mean() * lose - (1 - base.mean()) * gain) / base.mean()
        if onset is None and start is not None and true_drop >= threshold:
            onset = t
        draw = rng.random(items)
        current = np.where(base == 1, (draw >= lose).astype(np.float64), (draw < gain).astype(np.float64))
        change = paired_bootstrap_change(base, current, n_bootstrap=400, random_state=rng)
        steps.append(10.0 * t)
        drops.append(relative_drop(probe_set="ood", metric="accuracy", base=change.base, change=change.change,
                                   ci_low=change.ci_low, ci_high=change.ci_high, n_items=items))
        forecast: CrossingForecast = forecast_detection(steps, list(drops), threshold=threshold)
        forecasts.append(forecast.probability)
        if forecast.reason_code == "detected":
            detected = t
            break
        if forecast.applicable:
            applicable += 1
            p = forecast.probability if score is None else score(drops, forecasts)
            if first_alarm is None and p is not None and p >= alarm:
                first_alarm = t
    return Outcome(first_alarm, detected, onset, applicable, len(steps))


def _share(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="quiet and forgetting runs per cell")
    parser.add_argument("--seed", type=int, default=0)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--trend", action="store_true", help="score with the unfitted trend/1 instead")
    which.add_argument("--hazard", choices=["hazard/1", "hazard/2", "hazard/3"],
                       help="score with this hazard model refitted on the shipped corpus instead")
    parser.add_argument("--alarm", type=float, help="trend/1's alarm threshold (default: its no-change ceiling)")
    args = parser.parse_args()
    threshold = settings.forgetting_relative_drop
    horizon = settings.forecast_horizon_checkpoints
    score: Score | None = None
    if args.alarm is not None and not args.trend:
        parser.error("--alarm sets trend/1's threshold: use it with --trend")
    if args.trend:
        args.alarm = args.alarm if args.alarm is not None else no_change_ceiling(threshold=threshold, horizon=horizon)
        name = "trend/1"
    elif args.hazard:
        score, args.alarm = hazard_score(args.hazard, threshold=threshold, horizon=horizon)
        name = f"{args.hazard} refitted"
    else:
        score = model_score(HazardModel.of(settings.forecast_model), horizon=horizon)
        args.alarm = settings.forecast_alarm_probability
        name = f"{settings.forecast_model.inputs} served"
    rng = np.random.default_rng(args.seed)
    pooled: dict[str, list[bool]] = {"quiet": [], "early": [], "applicable": []}
    for items in SIZES:
        for base_accuracy in BASE_ACCURACIES:
            kw = {"items": items, "base_accuracy": base_accuracy, "threshold": threshold, "alarm": args.alarm,
                  "score": score}
            quiet = [simulate(rng, churn=QUIET_CHURN[i % len(QUIET_CHURN)], start=None, rate=0.0, **kw)
                     for i in range(args.runs)]
            forgetting = [simulate(rng, churn=0.01, start=int(rng.integers(2, 8)), rate=float(rng.choice(RATES)), **kw)
                          for _ in range(args.runs)]
            q = [o for o in quiet if o is not None]
            f = [o for o in forgetting if o is not None and o.onset is not None]
            quiet_alarm = [o.first_alarm is not None for o in q]
            by_churn = "/".join(f"{_share([o.first_alarm is not None for i, o in enumerate(quiet) if o is not None and i % len(QUIET_CHURN) == c]):.2f}"
                                for c in range(len(QUIET_CHURN)))
            applicable = [i < o.forecasts for o in q for i in range(o.checkpoints)]
            early = [o.first_alarm is not None and o.first_alarm <= o.onset - 2 for o in f if o.onset >= 3]
            detected = [o.detected is not None and o.detected <= o.onset + 1 for o in f]
            print(f"items={items:4d} base={base_accuracy:.1f} quiet_alarm={_share(quiet_alarm):.2f} "
                  f"(churn 0/2/5 %: {by_churn}) "
                  f"applicable={_share(applicable):.2f} early2={_share(early):.2f} "
                  f"detected_by_onset+1={_share(detected):.2f}", flush=True)
            if items >= 32:
                pooled["quiet"] += quiet_alarm
                pooled["early"] += early
                pooled["applicable"] += applicable
    print(f"forecast_noise quiet_alarm_runs={_share(pooled['quiet']):.3f} early2_share={_share(pooled['early']):.3f} "
          f"applicable_share={_share(pooled['applicable']):.3f} runs={len(pooled['quiet'])} alarm={args.alarm:.4f}"
          + f" model={name.replace(' ', '_')}")


if __name__ == "__main__":
    main()
