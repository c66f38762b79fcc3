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

from service.run_metrics import collect_run_metrics
from service.settings import Settings

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


_OLDEST_SQL = text(
    """
    SELECT j.queue_name, EXTRACT(EPOCH FROM now() - min(e.at))
      FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'deferred'
     WHERE j.status = 'todo' GROUP BY j.queue_name
    """
)


class DatabaseCollector(Collector):
    """Queue depth, job outcomes and durations, and DB reachability, read at scrape time."""

    def __init__(self, engine: Engine, *, run_ttl_seconds: float, max_blocks: int, alarm_probability: float) -> None:
        self.engine = engine
        self.alarm_probability = alarm_probability
        self.run_ttl_seconds = run_ttl_seconds
        self.max_blocks = max_blocks

    def collect(self) -> Iterator:
        up = GaugeMetricFamily("forgetwatch_database_up", "1 if the service reached PostgreSQL at scrape time.")
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SET LOCAL statement_timeout = '5s'"))
                queue_rows = conn.execute(_QUEUE_SQL).all()
                duration_rows = conn.execute(_DURATION_SQL).all()
                oldest_rows = conn.execute(_OLDEST_SQL).all()
                run_families = list(collect_run_metrics(conn, ttl_seconds=self.run_ttl_seconds,
                                                        max_blocks=self.max_blocks,
                                                        alarm_probability=self.alarm_probability))
        except Exception as error:  # noqa: BLE001 - a scrape must never fail because the DB is away
            log.warning("action=metrics_db_unreachable error=%s", type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _queue_families(queue_rows, oldest_rows)
        yield from _job_families(duration_rows)
        yield from run_families


def _queue_families(rows: list, oldest_rows: list) -> Iterator:
    depth = GaugeMetricFamily("forgetwatch_queue_depth", "Jobs waiting to run, by queue.", labels=["queue"])
    running = GaugeMetricFamily("forgetwatch_queue_running", "Jobs running now, by queue.", labels=["queue"])
    oldest = GaugeMetricFamily("forgetwatch_queue_oldest_job_age_seconds",
                               "Age of the oldest job waiting to run (0 when none), by queue.", labels=["queue"])
    counts: dict[tuple[str, str], int] = {(q, s): n for q, s, n in rows}
    ages = {q: float(age) for q, age in oldest_rows}
    for queue in sorted({q for q, _ in counts} | {"params", "probes", "maintenance"}):
        depth.add_metric([queue], counts.get((queue, "todo"), 0))
        running.add_metric([queue], counts.get((queue, "doing"), 0))
        oldest.add_metric([queue], ages.get(queue, 0.0))
    yield depth
    yield running
    yield oldest


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
    # Every known task reports both outcomes, at 0 until they happen, so increase() sees the first failure.
    for task in sorted(known_task_names() | {t for t, _ in by_outcome}):
        for outcome in ("succeeded", "failed"):
            outcomes.add_metric([task, outcome], by_outcome.get((task, outcome), 0))
    for task, values in sorted(by_task.items()):
        buckets = [(str(b), sum(v <= b for v in values)) for b in JOB_DURATION_BUCKETS]
        buckets.append(("+Inf", len(values)))
        durations.add_metric([task], buckets, sum(values))
    yield outcomes
    yield durations


def known_task_names() -> set[str]:
    from service.queue.defer import NAMESPACE
    from service.queue.tasks import blueprint

    return {f"{NAMESPACE}:{name}" for name in blueprint.tasks}


def build_registry(engine: Engine, settings: Settings) -> tuple[CollectorRegistry, RequestMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    request_metrics = RequestMetrics(registry)
    registry.register(DatabaseCollector(engine, run_ttl_seconds=settings.metrics_run_ttl_seconds,
                                        max_blocks=settings.metrics_max_blocks,
                                        alarm_probability=settings.forecast_alarm_probability))
    return registry, request_metrics
