"""The procrastinate App, built from the database URL (no module-level connection)."""

from __future__ import annotations

import copy

import procrastinate

from service.db.session import libpq_url
from service.queue import (  # noqa: F401 - registers tasks
    param_tasks,
    preview_tasks,
    probe_tasks,
    risk_tasks,
    sample_tasks,
    tasks,
)
from service.queue.defer import NAMESPACE

# Queues let operators place work: probe jobs want GPUs, parameter jobs want disk bandwidth.
QUEUES = ("params", "probes", "maintenance")


def create_queue_app(database_url: str) -> procrastinate.App:
    """An App with every task under our namespace. procrastinate's `add_tasks_from` renames the tasks
    of the blueprint it is given, so each App gets copies: a second App in one process (tests, or an
    API and a worker side by side) would otherwise see every name namespaced twice."""
    connector = procrastinate.PsycopgConnector(conninfo=libpq_url(database_url))
    app = procrastinate.App(connector=connector)
    own = procrastinate.Blueprint()
    own.tasks = {name: copy.copy(task) for name, task in tasks.blueprint.tasks.items()}
    app.add_tasks_from(own, namespace=NAMESPACE)
    return app
