"""Stored first responses of keyed POST/PUT requests (`idempotency_keys`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, Table, bindparam, insert, select, text
from sqlalchemy.orm import Session

from service.db.models import IdempotencyRecord

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:k, :t))")
# Core statements on the table, compiled once: no ORM unit of work on the ingest path.
_TABLE = Table(IdempotencyRecord.__tablename__, IdempotencyRecord.metadata)
_INSERT = insert(_TABLE)
_FIND = select(_TABLE.c.request_hash, _TABLE.c.status_code, _TABLE.c.response).where(
    _TABLE.c.token_id == bindparam("token_id"), _TABLE.c.key == bindparam("key"))


def lock_key(session: Session, *, token_id: int, key: str) -> None:
    """Hold the key (per token) until the transaction ends: concurrent retries wait for the first."""
    session.execute(_LOCK, {"k": key, "t": token_id})


def find_record(session: Session, *, token_id: int, key: str) -> Row[Any, Any, Any] | None:
    """(request_hash, status_code, response) stored under the key, or None."""
    return session.execute(_FIND, {"token_id": token_id, "key": key}).first()


def add_record(session: Session, *, token_id: int, key: str, method: str, path: str, request_hash: str,
               status_code: int, response: Any) -> None:
    """Store the first response (one INSERT, now: no unit-of-work flush at commit)."""
    session.execute(_INSERT, {"token_id": token_id, "key": key, "method": method, "path": path,
                              "request_hash": request_hash, "status_code": status_code, "response": response})
