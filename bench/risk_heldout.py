"""Held-out record of the forgetting alarms on the labelled runs in forgetwatch's database.

    FORGETWATCH_DATA_DIR=~/.cache/forgetwatch/calibration python -m bench.risk_heldout [--alpha 0.1]
        [--save-records FILE]
    python -m bench.risk_heldout --records bench/corpus/records.json.gz


Every labelled run (ground truth ``ood_accuracy`` posted for step 0 and its checkpoints, e.g. by
``make corpus``, or a file of `drift.replay.RunRecord` written by ``--save-records``; the project's
corpus ships as ``bench/corpus/records.json.gz``) is replayed through the service's detection and forecast, each checkpoint judged
only from the checkpoints up to it (`service.calibrate`). The alarm threshold of each judged run is
calibrated conformally on the non-forgetting runs of the *other* families (leave one family out)
or methods (leave one method out); metrics are defined in `drift.evaluation`. With a single family
in the corpus the leave-one-family-out alarm metrics are reported as n/a, never replaced by an
in-sample figure; the last line then comes from leave-one-method-out and says ``families=1``.
The alarm threshold is the conformal one never below the forecast a run whose probes have not changed
can reach (`drift.evaluation.alarm_threshold`, `drift.alarms.no_change_ceiling`), as the service
calibrates it; the frontier shows the conformal threshold alone.
Three discrete-time hazard models (`drift.hazard`, not served: ``hazard/1`` on the drops,
``hazard/2`` adding ood KL as a share of the base's entropy, ``hazard/3`` on the drops in units of their
own noise) are fitted and scored on the same
splits for comparison, with their own held-out conformal thresholds; a round 0.5 and the configured
threshold are reported beside the held-out conformal ones, and the leave-one-family-out record at
other false-alarm budgets (the frontier: how many early warnings each extra false alarm buys).

Last line: ``risk_heldout families=F methods=M auc_h3=… early2_share=… median_lead_ckpts=…
false_alarm_runs=… detect_rate=… persistence_auc=…``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drift.alarms import no_change_ceiling
from drift.evaluation import evaluate, first_alarm, held_out
from drift.hazard import held_out_alarms, held_out_auc
from drift.replay import dump_records, load_records, replay
from service.calibrate import report, stored_records
from service.settings import Settings

#: False-alarm budgets of the printed frontier (early warnings bought with false alarms).
FRONTIER_ALPHAS = (0.05, 0.10, 0.20, 0.30, 0.50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.10, help="largest share of non-forgetting runs that alarm")
    parser.add_argument("--label", default="ood_accuracy")
    parser.add_argument("--records", type=Path, help="evaluate these run records instead of the database's runs")
    parser.add_argument("--save-records", type=Path, help="also write the database's run records to this file")
    args = parser.parse_args()
    settings = Settings()
    horizon = settings.forecast_horizon_checkpoints
    corpus = load_records(args.records) if args.records else stored_records(settings, label=args.label)
    if args.save_records:
        dump_records(corpus, args.save_records)
    runs = [replay(r, relative_drop=settings.forgetting_relative_drop, horizon=horizon) for r in corpus]
    if not runs:
        raise SystemExit("bench.risk_heldout: no labelled runs in this database (make corpus writes some)")
    families = sorted({t.family for t in runs})
    methods = sorted({t.method for t in runs})
    print(f"{len(runs)} labelled runs, {sum(t.onset is not None for t in runs)} forgetting "
          f"({sum(t.onset is not None and t.onset >= 2 for t in runs)} with onset at or after the 3rd checkpoint, "
          f"{sum(t.onset == 0 for t in runs)} at the first); families {families}; methods {methods}")
    print(f"{'run':<44} {'method':<18} ckpts onset first_alarm@0.5 max_forecast")
    for t in runs:
        peak = max((p for p in t.forecast if p is not None), default=None)
        alarm = first_alarm(t, 0.5)
        print(f"{t.run:<44} {t.method:<18} {len(t.forecast):5d} {'-' if t.onset is None else t.onset:>5} "
              f"{'-' if alarm is None else alarm:>11} {'-' if peak is None else f'{peak:.3f}':>12}")
    floor = no_change_ceiling(threshold=settings.forgetting_relative_drop, horizon=horizon)
    by_method = held_out(runs, by="method", alpha=args.alpha, horizon=horizon, floor=floor)
    by_family = held_out(runs, by="family", alpha=args.alpha, horizon=horizon, floor=floor)
    for value, what in ((0.5, "a round 0.5, fitted on no run"),
                        (settings.forecast_alarm_probability, "the configured threshold (in-sample when calibrated here)")):
        print(report(evaluate(runs, [value] * len(runs), horizon=horizon, split=f"{what}: {value:g}")))
    print(report(by_method))
    print(report(by_family))
    if len(families) >= 2:
        print(f"frontier, leave one family out: the conformal threshold alone (without the no-change floor "
              f"{floor:.4f}) at other false-alarm budgets alpha")
        for alpha in FRONTIER_ALPHAS:
            print(f"  alpha={alpha:.2f} {report(held_out(runs, by='family', alpha=alpha, horizon=horizon))}")
    for by in ("method", "family"):
        for inputs in ("hazard/1", "hazard/2", "hazard/3"):
            hazard, trend, n = held_out_auc(runs, by=by, horizon=horizon, inputs=inputs,
                                            threshold=settings.forgetting_relative_drop)
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
            print(f"{inputs} fitted leaving one {by} out: auc_h3={fmt(hazard)} vs trend/1 auc_h3={fmt(trend)} "
                  f"on the same {n} risk-set checkpoints")
            record = held_out_alarms(runs, by=by, inputs=inputs, alpha=args.alpha, horizon=horizon,
                                     threshold=settings.forgetting_relative_drop)
            if record is not None:
                print(report(record))
    last = by_family if len(families) >= 2 else by_method
    if len(families) < 2:
        print("leave-one-family-out: not possible with one family; the line below is leave-one-method-out")
    print(last.line())


if __name__ == "__main__":
    main()
