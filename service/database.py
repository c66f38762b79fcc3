"""The database a command works on: the external one named by FORGETWATCH_DATABASE_URL, else the
embedded server in the data dir; its schema checked (or migrated) before use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.orm import Session

from service.settings import Settings


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[tuple[str, bool]]:
    """Yield (SQLAlchemy URL, embedded?). Without FORGETWATCH_DATABASE_URL, run the embedded server."""
    if settings.database_url:
        yield settings.database_url, False
        return
    from service.embedded import embedded_database

    with embedded_database(settings.data_dir) as url:
        yield url, True


def ensure_schema(url: str, *, embedded: bool, migrate: bool) -> None:
    from service.db import migrate as migrations
    from service.db.session import make_engine

    if embedded or migrate:
        migrations.upgrade(url)
        return
    engine = make_engine(url, pool_size=1)
    try:
        current = migrations.current_revision(engine)
    finally:
        engine.dispose()
    head = migrations.head_revision()
    if current != head:
        raise SystemExit(
            f"forgetwatch: the database schema is at {current or 'nothing'}, this version needs {head}.\n"
            "Run `forgetwatch migrate` (back up first), or start with `forgetwatch serve --migrate`."
        )


@contextlib.contextmanager
def command_session(settings: Settings) -> Iterator[Session]:
    """One session on the service's database for a short CLI command; the caller commits."""
    from service.db.session import make_engine, make_sessionmaker

    with database_url(settings) as (url, embedded):
        ensure_schema(url, embedded=embedded, migrate=False)
        engine = make_engine(url, pool_size=1)
        try:
            with make_sessionmaker(engine)() as session:
                yield session
        finally:
            engine.dispose()
