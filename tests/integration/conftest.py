"""Fixtures for integration tests: one real `forgetwatch serve` per module for the client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.db.session import make_engine, make_sessionmaker
from service.db.tokens import create_token
from service.settings import Settings
from tests.conftest import create_database, drop_database
from tests.integration.service_fixture import Service


@pytest.fixture(scope="module")
def module_service(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """One server and database for this module (tests use their own run names): starting
    `forgetwatch serve` costs seconds, and the restart tests restart it anyway."""
    folder = tmp_path_factory.mktemp("client-service")
    (folder / "ckpts").mkdir()
    database_url = create_database(server_url, template=template_database)
    settings = Settings(
        database_url=database_url, data_dir=folder / "data", checkpoint_roots=[folder / "ckpts"]
    )
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        token = create_token(session, name="client-tests", scope="write")
        session.commit()
    engine.dispose()
    running = Service(settings, token, folder / "serve.log")
    try:
        yield running
    finally:
        running.stop()
        drop_database(server_url, database_url)


@pytest.fixture
def service(module_service: Service) -> Service:
    """The module's server, running (a test that stopped it and failed left it down)."""
    if module_service.process is None:
        module_service.start()
    return module_service
