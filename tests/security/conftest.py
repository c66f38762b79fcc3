"""The security tests run the real procrastinate worker in-process until the queue is empty."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import procrastinate
import pytest
from sqlalchemy import Engine

from service.db.session import libpq_url, make_sessionmaker
from service.queue.app import create_queue_app
from service.queue.tasks import WorkerServices
from service.settings import Settings

_APPS: list[procrastinate.App] = []


def _queue_app(url: str) -> procrastinate.App:
    """Tasks register on the first App built in a process; later tests swap only its connector."""
    if not _APPS:
        _APPS.append(create_queue_app(url))
    return _APPS[0]


@pytest.fixture
def drain_queue(settings: Settings, engine: Engine) -> Callable[[], None]:
    """Run every queued job (and the jobs they queue) to its end, then return."""

    def drain() -> None:
        services = WorkerServices(settings=settings, engine=engine, sessions=make_sessionmaker(engine))
        connector = procrastinate.PsycopgConnector(conninfo=libpq_url(settings.database_url))

        async def work() -> None:
            with _queue_app(settings.database_url).replace_connector(connector) as app:
                async with app.open_async():
                    await app.run_worker_async(wait=False, concurrency=1, install_signal_handlers=False,
                                               additional_context={"services": services})

        asyncio.run(work())

    return drain


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the checkpoint roots, never inside them."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder
