"""The procrastinate App, built from the database URL (no module-level connection)."""

from __future__ import annotations

import procrastinate

from service.db.session import libpq_url
from service.queue import param_tasks, probe_tasks, risk_tasks, sample_tasks, tasks  # noqa: F401 - registers tasks
from service.queue.defer import NAMESPACE

# Queues let operators place work: probe jobs want GPUs, parameter jobs want disk bandwidth.
QUEUES = ("params", "probes", "maintenance")


def create_queue_app(database_url: str) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(conninfo=libpq_url(database_url))
    app = procrastinate.App(connector=connector)
    app.add_tasks_from(tasks.blueprint, namespace=NAMESPACE)
    return app
