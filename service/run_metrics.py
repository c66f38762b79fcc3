"""Per-run drift metrics for Prometheus, read from PostgreSQL at scrape time.

Values are the latest analysed checkpoint of each active run, so they survive restarts and are
identical across API processes. Runs with no new checkpoint for `metrics_run_ttl_seconds` drop
out. Cardinality is bounded: labels are run, method and small fixed sets; per-block drift is
exported only for the `metrics_max_blocks` most drifted blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from service.db import metric_queries as db
from service.db.previews import run_forecasts
from service.db.response_drift import forgetting_ratio
from service.retention import retention_drops

RUN_LABELS = ["run", "method"]



def _family(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=[*RUN_LABELS, *extra])


def collect_run_metrics(conn: Connection, *, ttl_seconds: float, max_blocks: int,
                        alarm_probability: float) -> Iterator[Any]:
    runs = {row.id: row for row in db.active_runs(conn=conn, ttl_seconds=ttl_seconds)}
    last_step = _family("forgetwatch_last_checkpoint_step", "Step of the latest checkpoint received.")
    failures = CounterMetricFamily("forgetwatch_checkpoint_failures", "Checkpoints whose analysis failed.",
                                   labels=RUN_LABELS)
    for run in runs.values():
        last_step.add_metric([run.name, run.method], run.last_step)
        failures.add_metric([run.name, run.method], run.failures)
    yield last_step
    yield failures

    rel_l2 = _family("forgetwatch_param_relative_l2", "Relative L2 distance to the base weights "
                     "(block=global, or the most drifted layers).", ("block",))
    nss = _family("forgetwatch_param_spectral_shift", "Normalized spectral shift of the top-k singular values.")
    latest = db.latest_global_params(conn=conn, run_ids=list(runs))
    checkpoint_run = {row.checkpoint_id: runs[row.run_id] for row in latest}
    for row in latest:
        run = runs[row.run_id]
        if row.relative_l2_distance is not None:
            rel_l2.add_metric([run.name, run.method, "global"], row.relative_l2_distance)
        if row.normalized_spectral_shift is not None:
            nss.add_metric([run.name, run.method], row.normalized_spectral_shift)
    for row in db.top_blocks(conn=conn, checkpoint_ids=list(checkpoint_run), n=max_blocks):
        run = checkpoint_run[row.checkpoint_id]
        if row.relative_l2_distance is not None:
            rel_l2.add_metric([run.name, run.method, row.key], row.relative_l2_distance)
    yield rel_l2
    yield nss
    yield from collect_analysis_metrics(conn, runs, alarm_probability=alarm_probability)
    yield collect_retention(conn, runs)
    yield collect_preflight(conn, runs)


def collect_retention(conn: Connection, runs: dict[int, Any]) -> GaugeMetricFamily:
    """Per retention set of each staged run's current stage: its relative drop since the stage began."""
    family = _family("forgetwatch_retention_drop_ratio", "Relative drop of accuracy (or reference log-likelihood) on "
                     "a retention set since the run's current stage began (the previous stage's last analysed "
                     "checkpoint, or the base); positive = worse, at the latest analysed checkpoint.",
                     ("stage", "probe_set"))
    with Session(bind=conn) as session:
        for run_id, run in runs.items():
            for stage, probe_set, ratio in retention_drops(session, run_id=run_id):
                family.add_metric([run.name, run.method, stage, probe_set], ratio)
    return family


PREFLIGHT_BOUNDS = ("estimate", "ci_low", "ci_high")


def collect_preflight(conn: Connection, runs: dict[int, Any]) -> GaugeMetricFamily:
    """Per previewed stage and retention set: the pre-flight forecast of its relative drop over the stage."""
    family = _family("forgetwatch_preflight_forecast_drop_ratio", "Pre-flight forecast of a retention set's "
                     "relative drop across a stage, from the stage's previewed training prompts (bound: estimate, "
                     "ci_low, ci_high of its interval); positive = forgotten. Absent for a set the forecast could "
                     "not compare with.", ("stage", "probe_set", "bound"))
    with Session(bind=conn) as session:
        for run_id, run in runs.items():
            for stage, forecast in run_forecasts(session, run_id=run_id).items():
                for entry in forecast.get("retention_sets", []):
                    values = (entry.get("loss"), entry.get("ci_low"), entry.get("ci_high"))
                    for bound, value in zip(PREFLIGHT_BOUNDS, values, strict=True):
                        if value is not None:
                            family.add_metric([run.name, run.method, stage, entry["probe_set"], bound], value)
    return family


def collect_analysis_metrics(conn: Connection, runs: dict[int, Any], *, alarm_probability: float) -> Iterator[Any]:
    ids = list(runs)
    forecast = _family("forgetwatch_forgetting_forecast_probability", "Probability that ood forgetting is "
                       "detected within the next checkpoints (FORGETWATCH_FORECAST_HORIZON_CHECKPOINTS); exported "
                       "only while the forecast applies: never once forgetting is detected.")
    predicted = _family("forgetwatch_forgetting_predicted", "1 when the forgetting forecast is at or above the "
                        "service's alarm threshold (FORGETWATCH_FORECAST_ALARM_PROBABILITY), else 0; absent when it "
                        "abstains or forgetting is detected.")
    applicable = _family("forgetwatch_forecast_applicable", "1 when the forgetting forecast applies at the latest "
                         "checkpoint, 0 when it abstains; `reason` is the abstention's code (empty when 1).",
                         ("reason",))
    detected = _family("forgetwatch_ood_forgetting_detected", "1 when the paired-bootstrap interval of the worst "
                       "ood probe set's relative drop lies at or above the forgetting threshold, else 0.")
    drop_low = _family("forgetwatch_ood_forgetting_drop_low_ratio", "Lower bound of the paired-bootstrap interval "
                       "of the worst ood probe set's relative drop vs base (positive = worse than base).")
    steps_to = _family("forgetwatch_steps_to_threshold", "Forecast training steps until a raw series crosses its "
                       "fixed threshold (Theil-Sen trend; informational).", ("series",))
    accel = _family("forgetwatch_param_drift_acceleration_ratio", "Recent slope of parameter drift per step "
                    "divided by the earlier slope.")
    change = _family("forgetwatch_risk_changepoint", "1 when a change point was detected at the latest checkpoint.")
    finding = _family("forgetwatch_finding_active", "1 for each finding (a fixed set of codes, with its severity) "
                      "at the latest assessed checkpoint.", ("code", "severity"))
    for row in db.latest_risk(conn=conn, run_ids=ids):
        labels = [runs[row.run_id].name, runs[row.run_id].method]
        if row.applicable and row.value is not None:
            forecast.add_metric(labels, row.value)
            predicted.add_metric(labels, 1.0 if row.value >= alarm_probability else 0.0)
            applicable.add_metric([*labels, ""], 1.0)
        else:
            applicable.add_metric([*labels, row.reason_code or "unknown"], 0.0)
        detection = row.detection or {}
        if detection.get("measured"):
            detected.add_metric(labels, 1.0 if row.detected else 0.0)
            if detection.get("drop_low") is not None:
                drop_low.add_metric(labels, detection["drop_low"])
        change.add_metric(labels, 1.0 if row.changepoint else 0.0)
        for found in row.findings or []:
            if isinstance(found, dict) and found.get("code") and found.get("severity"):
                finding.add_metric([*labels, str(found["code"]), str(found["severity"])], 1.0)
        forecasts = row.forecasts or {}
        if forecasts.get("acceleration_ratio") is not None:
            accel.add_metric(labels, forecasts["acceleration_ratio"])
        for series, trend in forecasts.items():
            if series != "forgetting" and isinstance(trend, dict) and trend.get("steps_to_threshold") is not None:
                steps_to.add_metric([*labels, series], trend["steps_to_threshold"])
    yield from (forecast, predicted, applicable, detected, drop_low, steps_to, accel, change, finding)

    kl = _family("forgetwatch_probe_kl_nats", "Mean per-token KL between base and checkpoint on a probe set.",
                 ("probe_set", "domain", "direction"))
    forgetting = _family("forgetwatch_probe_forgetting_ratio", "Relative drop vs base of accuracy (or reference "
                         "log-likelihood); positive = worse, negative = improved.", ("probe_set", "domain"))
    for row in db.latest_probes(conn=conn, run_ids=ids):
        labels = [runs[row.run_id].name, runs[row.run_id].method, row.probe_set, row.domain]
        if row.kl_forward is not None:
            kl.add_metric([*labels, "forward"], row.kl_forward)
        if row.kl_reverse is not None:
            kl.add_metric([*labels, "reverse"], row.kl_reverse)
        ratio = forgetting_ratio(row._mapping)
        if ratio is not None:
            forgetting.add_metric(labels, ratio)
    yield from (kl, forgetting)

    mmd = _family("forgetwatch_response_mmd", "MMD^2 between embeddings of the run's responses and the base's.")
    shifted = _family("forgetwatch_response_shift_detected", "1 when the embedding two-sample test rejects.")
    evalue = _family("forgetwatch_response_shift_evalue", "Largest value so far of the run's sequential "
                     "response-shift e-process (an e-value: under no shift, P(ever >= 1/alpha) <= alpha, so 20 "
                     "is a run-level false-alarm probability of at most 5 %).")
    diversity = _family("forgetwatch_response_diversity", "distinct-2 of the latest sampled responses.")
    baseline = _family("forgetwatch_response_diversity_baseline", "distinct-2 of the base model's responses.")
    repetition = _family("forgetwatch_response_repetition_ratio", "Share of degenerate, loop-dominated responses.")
    for row in db.latest_samples(conn=conn, run_ids=ids):
        labels = [runs[row.run_id].name, runs[row.run_id].method]
        for family, value in ((mmd, row.mmd2), (diversity, row.distinct2), (baseline, row.distinct2_base),
                              (repetition, row.repetition_ratio), (evalue, row.shift_evalue_max)):
            if value is not None:
                family.add_metric(labels, value)
        if row.shift_detected is not None:
            shifted.add_metric(labels, 1.0 if row.shift_detected else 0.0)
    yield from (mmd, shifted, evalue, diversity, baseline, repetition)
