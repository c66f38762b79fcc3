"""Every Prometheus metric forgetwatch exports, declared in one place.

- Request metrics are counted by the process that served the request. With several API processes
  (`forgetwatch serve --workers N`) they run in prometheus_client's multiprocess mode: each process
  writes its counts to files in one folder, and every process's /metrics sums all of them, so a
  scrape sees one truth whichever process answers it.
- Job durations are observed by the worker that ran the job, as it finishes (a worker serves them on
  `FORGETWATCH_WORKER_METRICS_PORT`; a worker inside `forgetwatch serve` on the API's /metrics).
- Queue state, job outcomes and per-run drift are read from PostgreSQL at scrape time, so every
  process reports the same values and a restart loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from service.db import metric_queries as db
from service.run_metrics import collect_run_metrics
from service.settings import Settings

log = logging.getLogger("forgetwatch")

# Drift jobs take seconds to many minutes; the web defaults would put them all in +Inf.
JOB_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RequestMetrics:
    """Counted in the API process that served the request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "forgetwatch_http_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=registry,
        )
        self.latency = Histogram(
            "forgetwatch_http_request_duration_seconds", "HTTP request latency by route template.",
            ["route", "method"], buckets=REQUEST_BUCKETS, registry=registry,
        )


class JobMetrics:
    """Observed by the worker that ran the job, once it ends (`outcome`: succeeded, failed, aborted)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "forgetwatch_job_duration_seconds", "Run time of jobs, observed by the worker as each ends.",
            ["task", "outcome"], buckets=JOB_DURATION_BUCKETS, registry=registry,
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
                db.limit_statement_time(conn=conn, seconds=5)
                queue_rows = db.queue_counts(conn=conn)
                finished_rows = db.finished_job_counts(conn=conn)
                oldest_rows = db.oldest_waiting_seconds(conn=conn)
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
        yield from _job_families(finished_rows)
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


def _job_families(rows: Sequence[Any]) -> Iterator:
    outcomes = CounterMetricFamily("forgetwatch_jobs_finished", "Finished jobs by task and outcome.",
                                   labels=["task", "outcome"])
    by_outcome = {(task, status): count for task, status, count in rows}
    # Every known task reports both outcomes, at 0 until they happen, so increase() sees the first failure.
    for task in sorted(known_task_names() | {t for t, _ in by_outcome}):
        for outcome in ("succeeded", "failed"):
            outcomes.add_metric([task, outcome], by_outcome.get((task, outcome), 0))
    yield outcomes


def known_task_names() -> set[str]:
    from service.queue.defer import NAMESPACE
    from service.queue.tasks import blueprint

    return {f"{NAMESPACE}:{name}" for name in blueprint.tasks}


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in shared files (PROMETHEUS_MULTIPROC_DIR was set before
    it was first imported: `forgetwatch serve --workers N` sets it for its API processes)."""
    return values.ValueClass.__name__ == "MmapedValue"


def build_registry(engine: Engine, settings: Settings) -> tuple[CollectorRegistry, RequestMetrics, JobMetrics]:
    """The registry /metrics exposes, and the request and job metrics to record into."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        # Recorded through a registry nobody scrapes; exposed once, summed over every process's files.
        recording = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry)
    else:
        recording = registry
    request_metrics, job_metrics = RequestMetrics(recording), JobMetrics(recording)
    registry.register(DatabaseCollector(engine, run_ttl_seconds=settings.metrics_run_ttl_seconds,
                                        max_blocks=settings.metrics_max_blocks,
                                        alarm_probability=settings.forecast_alarm_probability))
    return registry, request_metrics, job_metrics
