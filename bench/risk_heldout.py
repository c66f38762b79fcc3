"""Held-out record of the forgetting alarms on the labelled runs in forgetwatch's database.

    FORGETWATCH_DATA_DIR=~/.cache/forgetwatch/calibration python -m bench.risk_heldout [--alpha 0.1]
        [--save-records FILE]
    python -m bench.risk_heldout --records bench/corpus/records.json.gz


Every labelled run (ground truth ``ood_accuracy`` posted for step 0 and its checkpoints, e.g. by
``make corpus``, or a file of `drift.replay.RunRecord` written by ``--save-records``; the project's
corpus ships as ``bench/corpus/records.json.gz``) is replayed through the service's detection and
forecast, each checkpoint judged only from the checkpoints up to it (`drift.replay`).

The served forecast (``hazard/3``, `drift.hazard`) is judged the way a model that never saw a family
(or method) would be: for each held-out group, the model is fitted on the other groups' runs, and
the group's alarm threshold is conformal on those groups' non-forgetting runs, each scored by a fit
without it, never below that model's no-change ceiling (`drift.hazard_heldout.held_out_alarms`); metrics are
defined in `drift.evaluation`. With fewer than two families the last line is leave-one-method-out.
For comparison: the unfitted trend (``trend/1``, `drift.alarms`) with held-out conformal thresholds,
hazard/1 (raw drops) and hazard/2 (with ood KL share) fitted the same way, the served model and
threshold in force (in-sample on the shipped corpus), and the served model's frontier: the
leave-one-family-out record at other false-alarm budgets (how many early warnings each extra false
alarm buys).

Last line: ``risk_heldout families=F methods=M auc_h3=… early2_share=… median_lead_ckpts=…
false_alarm_runs=… detect_rate=… persistence_auc=…``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drift.alarms import no_change_ceiling as trend_ceiling
from drift.evaluation import evaluate, first_alarm, held_out
from drift.forecast_limits import forecast_limits
from drift.hazard import HazardModel
from drift.hazard_heldout import held_out_alarms, held_out_auc
from drift.replay import dump_records, load_records, replay
from service.calibrate import SERVED, report, stored_records
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
    print(f"{'run':<44} {'method':<18} ckpts onset first_alarm@0.5 max_forecast (trend/1)")
    for t in runs:
        peak = max((p for p in t.forecast if p is not None), default=None)
        alarm = first_alarm(t, 0.5)
        print(f"{t.run:<44} {t.method:<18} {len(t.forecast):5d} {'-' if t.onset is None else t.onset:>5} "
              f"{'-' if alarm is None else alarm:>11} {'-' if peak is None else f'{peak:.3f}':>12}")
    relative_drop = settings.forgetting_relative_drop
    trend_floor = trend_ceiling(threshold=relative_drop, horizon=horizon)
    print(f"trend/1 (unfitted), thresholds never below its no-change ceiling {trend_floor:.4f}:")
    for by in ("method", "family"):
        print(report(held_out(runs, by=by, alpha=args.alpha, horizon=horizon, floor=trend_floor)))
    in_force = HazardModel.of(settings.forecast_model)
    served = [in_force.scored(t, horizon=horizon) for t in runs]
    in_sample = "the served model and threshold in force (in-sample on the corpus they were fitted on)"
    for value, what in ((0.5, "the served model at a round 0.5"), (settings.forecast_alarm_probability, in_sample)):
        print(report(evaluate(served, [value] * len(served), horizon=horizon, split=f"{what}: {value:g}")))
    records = {}
    for by in ("method", "family"):
        for inputs in ("hazard/1", "hazard/2", "hazard/3"):
            hazard, trend, n = held_out_auc(runs, by=by, horizon=horizon, inputs=inputs, threshold=relative_drop)
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
            print(f"{inputs} fitted leaving one {by} out: auc_h3={fmt(hazard)} vs trend/1 auc_h3={fmt(trend)} "
                  f"on the same {n} risk-set checkpoints")
            record = held_out_alarms(runs, by=by, inputs=inputs, alpha=args.alpha, horizon=horizon,
                                     threshold=relative_drop, floor=inputs == SERVED)
            if record is not None:
                print(("served: " if inputs == SERVED else "") + report(record))
                records[by, inputs] = record
    if len(families) >= 2:
        print(f"frontier of {SERVED}, leave one family out, at other false-alarm budgets alpha")
        for alpha in FRONTIER_ALPHAS:
            record = held_out_alarms(runs, by="family", inputs=SERVED, alpha=alpha, horizon=horizon,
                                     threshold=relative_drop, floor=True)
            print(f"  alpha={alpha:.2f} {report(record) if record else 'n/a'}")
    print("limits of any forecast read from the probes alone, on these runs (drift.forecast_limits):")
    for line in forecast_limits(runs, threshold=relative_drop, horizon=horizon).lines():
        print(f"  {line}")
    last = records.get(("family", SERVED)) or records.get(("method", SERVED))
    if last is None:
        raise SystemExit(f"bench.risk_heldout: {SERVED} cannot be fitted leaving a group out of these runs "
                         "(too few groups, or a group's others hold no forgetting)")
    if ("family", SERVED) not in records:
        print("leave-one-family-out: not possible with these families; the line below is leave-one-method-out")
    print(last.line())


if __name__ == "__main__":
    main()
