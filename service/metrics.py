"""Every Prometheus metric forgetwatch exports, declared in one place.

Request metrics live in the process that served the request. Queue and job metrics are read from
PostgreSQL at scrape time, so every API process reports the same values and a restart loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

log = logging.getLogger("forgetwatch")

# Drift jobs take seconds to many minutes; the web defaults would put them all in +Inf.
JOB_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "forgetwatch_http_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=registry,
        )
        self.latency = Histogram(
            "forgetwatch_http_request_duration_seconds", "HTTP request latency by route template.",
            ["route", "method"], buckets=REQUEST_BUCKETS, registry=registry,
        )


_QUEUE_SQL = text(
    "SELECT queue_name, status::text, count(*) FROM procrastinate_jobs GROUP BY queue_name, status"
)
_DURATION_SQL = text(
    """
    SELECT j.task_name, j.status::text,
           EXTRACT(EPOCH FROM (max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed'))
                             - max(e.at) FILTER (WHERE e.type = 'started'))) AS seconds
      FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id
     WHERE j.status IN ('succeeded', 'failed')
     GROUP BY j.id
    """
)


class DatabaseCollector(Collector):
    """Queue depth, job outcomes and durations, and DB reachability, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator:
        up = GaugeMetricFamily("forgetwatch_database_up", "1 if the service reached PostgreSQL at scrape time.")
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SET LOCAL statement_timeout = '5s'"))
                queue_rows = conn.execute(_QUEUE_SQL).all()
                duration_rows = conn.execute(_DURATION_SQL).all()
        except Exception as error:  # noqa: BLE001 - a scrape must never fail because the DB is away
            log.warning("action=metrics_db_unreachable error=%s", type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _queue_families(queue_rows)
        yield from _job_families(duration_rows)


def _queue_families(rows: list) -> Iterator:
    depth = GaugeMetricFamily("forgetwatch_queue_depth", "Jobs waiting to run, by queue.", labels=["queue"])
    running = GaugeMetricFamily("forgetwatch_queue_running", "Jobs running now, by queue.", labels=["queue"])
    counts: dict[tuple[str, str], int] = {(q, s): n for q, s, n in rows}
    for queue in sorted({q for q, _ in counts} | {"params", "probes", "maintenance"}):
        depth.add_metric([queue], counts.get((queue, "todo"), 0))
        running.add_metric([queue], counts.get((queue, "doing"), 0))
    yield depth
    yield running


def _job_families(rows: list) -> Iterator:
    outcomes = CounterMetricFamily("forgetwatch_jobs_finished", "Finished jobs by task and outcome.",
                                   labels=["task", "outcome"])
    durations = HistogramMetricFamily("forgetwatch_job_duration_seconds", "Run time of finished jobs.",
                                      labels=["task"])
    by_task: dict[str, list[float]] = {}
    by_outcome: dict[tuple[str, str], int] = {}
    for task, status, seconds in rows:
        by_outcome[(task, status)] = by_outcome.get((task, status), 0) + 1
        if seconds is not None:
            by_task.setdefault(task, []).append(float(seconds))
    for (task, status), count in sorted(by_outcome.items()):
        outcomes.add_metric([task, status], count)
    for task, values in sorted(by_task.items()):
        buckets = [(str(b), sum(v <= b for v in values)) for b in JOB_DURATION_BUCKETS]
        buckets.append(("+Inf", len(values)))
        durations.add_metric([task], buckets, sum(values))
    yield outcomes
    yield durations


def build_registry(engine: Engine) -> tuple[CollectorRegistry, RequestMetrics]:
    registry = CollectorRegistry(auto_describe=True)
    request_metrics = RequestMetrics(registry)
    registry.register(DatabaseCollector(engine))
    return registry, request_metrics
