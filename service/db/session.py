"""Engine and session construction."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, pool_size: int = 10, pre_ping: bool = True) -> Engine:
    """An engine that fails fast (5 s connect timeout) instead of hanging when the DB is away.

    `pre_ping=False` (the API's engines) saves a round trip per request: after a database restart the
    first request of each process on a stale connection is answered 503 (retry; nothing was stored)
    and the whole pool is replaced at once."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=20,
        pool_pre_ping=pre_ping,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def libpq_url(sqlalchemy_url: str) -> str:
    """`postgresql+psycopg://...` -> `postgresql://...`, the form psycopg and procrastinate take."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    return "postgresql" + sep + rest if scheme.startswith("postgresql") else sqlalchemy_url
