"""Cluster administration the embedded server needs: its database, created once."""

from __future__ import annotations

import psycopg


def ensure_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE if it does not exist yet (admin_url: a libpq URL to another database)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
