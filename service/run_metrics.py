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
from sqlalchemy import Connection, text

from service.db.response_drift import forgetting_ratio

RUN_LABELS = ["run", "method"]

_ACTIVE_RUNS = text(
    """
    SELECT r.id, r.name, r.method, max(c.step) AS last_step,
           count(*) FILTER (WHERE c.status = 'failed') AS failures
      FROM runs r JOIN checkpoints c ON c.run_id = r.id
     WHERE r.archived_at IS NULL
     GROUP BY r.id
    HAVING max(c.received_at) > now() - make_interval(secs => :ttl)
    """
)
_LATEST_PARAMS = text(
    """
    SELECT DISTINCT ON (c.run_id) c.run_id, c.id AS checkpoint_id, s.relative_l2_distance, s.normalized_spectral_shift
      FROM param_drift_summaries s JOIN checkpoints c ON c.id = s.checkpoint_id
     WHERE s.scope = 'global' AND c.run_id = ANY(:runs)
     ORDER BY c.run_id, c.step DESC
    """
)
_TOP_BLOCKS = text(
    """
    SELECT checkpoint_id, key, relative_l2_distance FROM (
        SELECT checkpoint_id, key, relative_l2_distance,
               row_number() OVER (PARTITION BY checkpoint_id ORDER BY relative_l2_distance DESC NULLS LAST) AS rank
          FROM param_drift_summaries WHERE scope = 'block' AND checkpoint_id = ANY(:checkpoints)) ranked
     WHERE rank <= :n
    """
)


def _family(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=[*RUN_LABELS, *extra])


def collect_run_metrics(conn: Connection, *, ttl_seconds: float, max_blocks: int,
                        alarm_probability: float) -> Iterator[Any]:
    runs = {row.id: row for row in conn.execute(_ACTIVE_RUNS, {"ttl": ttl_seconds})}
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
    latest = conn.execute(_LATEST_PARAMS, {"runs": list(runs)}).all() if runs else []
    checkpoint_run = {row.checkpoint_id: runs[row.run_id] for row in latest}
    for row in latest:
        run = runs[row.run_id]
        if row.relative_l2_distance is not None:
            rel_l2.add_metric([run.name, run.method, "global"], row.relative_l2_distance)
        if row.normalized_spectral_shift is not None:
            nss.add_metric([run.name, run.method], row.normalized_spectral_shift)
    if checkpoint_run and max_blocks > 0:
        for row in conn.execute(_TOP_BLOCKS, {"checkpoints": list(checkpoint_run), "n": max_blocks}):
            run = checkpoint_run[row.checkpoint_id]
            if row.relative_l2_distance is not None:
                rel_l2.add_metric([run.name, run.method, row.key], row.relative_l2_distance)
    yield rel_l2
    yield nss
    yield from collect_analysis_metrics(conn, runs, alarm_probability=alarm_probability)


_LATEST_RISK = text(
    """
    SELECT DISTINCT ON (c.run_id) c.run_id, r.applicable, r.value, r.reason_code, r.changepoint, r.forecasts,
           r.detected, r.detection, r.findings
      FROM risk_estimates r JOIN checkpoints c ON c.id = r.checkpoint_id
     WHERE c.run_id = ANY(:runs) ORDER BY c.run_id, c.step DESC
    """
)
_LATEST_PROBES = text(
    """
    SELECT DISTINCT ON (c.run_id, p.probe_set_id) c.run_id, s.name AS probe_set, p.domain, p.kl_forward,
           p.kl_reverse, p.accuracy_change, p.accuracy_base, p.loglik_change, p.loglik_base
      FROM probe_drift p JOIN checkpoints c ON c.id = p.checkpoint_id JOIN probe_sets s ON s.id = p.probe_set_id
     WHERE c.run_id = ANY(:runs) ORDER BY c.run_id, p.probe_set_id, c.step DESC
    """
)
_LATEST_SAMPLES = text(
    """
    SELECT DISTINCT ON (run_id) run_id, mmd2, shift_detected, distinct2, distinct2_base, repetition_ratio
      FROM sample_drift WHERE run_id = ANY(:runs) ORDER BY run_id, step DESC
    """
)


def collect_analysis_metrics(conn: Connection, runs: dict[int, Any], *, alarm_probability: float) -> Iterator[Any]:
    ids = {"runs": list(runs)}
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
    for row in conn.execute(_LATEST_RISK, ids) if runs else []:
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
    for row in conn.execute(_LATEST_PROBES, ids) if runs else []:
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
    diversity = _family("forgetwatch_response_diversity", "distinct-2 of the latest sampled responses.")
    baseline = _family("forgetwatch_response_diversity_baseline", "distinct-2 of the base model's responses.")
    repetition = _family("forgetwatch_response_repetition_ratio", "Share of degenerate, loop-dominated responses.")
    for row in conn.execute(_LATEST_SAMPLES, ids) if runs else []:
        labels = [runs[row.run_id].name, runs[row.run_id].method]
        for family, value in ((mmd, row.mmd2), (diversity, row.distinct2), (baseline, row.distinct2_base),
                              (repetition, row.repetition_ratio)):
            if value is not None:
                family.add_metric(labels, value)
        if row.shift_detected is not None:
            shifted.add_metric(labels, 1.0 if row.shift_detected else 0.0)
    yield from (mmd, shifted, diversity, baseline, repetition)
