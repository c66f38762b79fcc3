"""The reads behind `/metrics`: queue state and the latest drift of each active run.

Each function takes the connection as a keyword argument and returns plain rows; `service.metrics`
and `service.run_metrics` turn them into metric families.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

# Only live jobs are counted (a partial index of procrastinate's covers them); finished ones come from
# the rollup a trigger keeps (migration 0011), so a scrape never aggregates the job history.
_QUEUE = text("SELECT queue_name, status::text, count(*) FROM procrastinate_jobs "
              "WHERE status IN ('todo', 'doing') GROUP BY queue_name, status")
_FINISHED = text("SELECT task_name, outcome, jobs FROM job_outcome_counts")
_OLDEST = text(
    """
    SELECT j.queue_name, EXTRACT(EPOCH FROM now() - min(e.at))
      FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'deferred'
     WHERE j.status = 'todo' GROUP BY j.queue_name
    """
)
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
    SELECT DISTINCT ON (run_id) run_id, mmd2, shift_detected, distinct2, distinct2_base, repetition_ratio,
           shift_evalue_max
      FROM sample_drift WHERE run_id = ANY(:runs) ORDER BY run_id, step DESC
    """
)


def limit_statement_time(*, conn: Connection, seconds: int) -> None:
    """Cancel any statement of this transaction that runs longer than `seconds`."""
    conn.execute(text(f"SET LOCAL statement_timeout = '{int(seconds)}s'"))


def queue_counts(*, conn: Connection) -> Sequence[Any]:
    """(queue, 'todo' | 'doing', jobs) for every queue with live jobs."""
    return conn.execute(_QUEUE).all()


def finished_job_counts(*, conn: Connection) -> Sequence[Any]:
    """(task, 'succeeded' | 'failed', jobs ever finished so), from the rollup."""
    return conn.execute(_FINISHED).all()


def oldest_waiting_seconds(*, conn: Connection) -> Sequence[Any]:
    """(queue, age in seconds of its oldest waiting job) for queues with waiting jobs."""
    return conn.execute(_OLDEST).all()


def active_runs(*, conn: Connection, ttl_seconds: float) -> Sequence[Any]:
    """Unarchived runs with a checkpoint received within `ttl_seconds`: id, name, method, last_step, failures."""
    return conn.execute(_ACTIVE_RUNS, {"ttl": ttl_seconds}).all()


def latest_global_params(*, conn: Connection, run_ids: Sequence[int]) -> Sequence[Any]:
    """Per run, the global parameter drift of its latest analysed checkpoint."""
    return conn.execute(_LATEST_PARAMS, {"runs": list(run_ids)}).all() if run_ids else []


def top_blocks(*, conn: Connection, checkpoint_ids: Sequence[int], n: int) -> Sequence[Any]:
    """The `n` most drifted blocks (relative L2) of each checkpoint."""
    if not checkpoint_ids or n <= 0:
        return []
    return conn.execute(_TOP_BLOCKS, {"checkpoints": list(checkpoint_ids), "n": n}).all()


def latest_risk(*, conn: Connection, run_ids: Sequence[int]) -> Sequence[Any]:
    """Per run, the risk estimate of its latest assessed checkpoint."""
    return conn.execute(_LATEST_RISK, {"runs": list(run_ids)}).all() if run_ids else []


def latest_probes(*, conn: Connection, run_ids: Sequence[int]) -> Sequence[Any]:
    """Per run and probe set, the probe drift of the latest analysed checkpoint."""
    return conn.execute(_LATEST_PROBES, {"runs": list(run_ids)}).all() if run_ids else []


def latest_samples(*, conn: Connection, run_ids: Sequence[int]) -> Sequence[Any]:
    """Per run, the response drift of its latest sample batch."""
    return conn.execute(_LATEST_SAMPLES, {"runs": list(run_ids)}).all() if run_ids else []
