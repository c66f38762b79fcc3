"""Stored first responses of keyed POST/PUT requests (`idempotency_keys`), and forgetting them.

A key replays its first response for `IDEMPOTENCY_TTL` (7 days): far longer than any client retries a
call (the trainer client's journal replays on the next start), short enough that the table does not
grow without bound. After that the key is free again: the same key then acts as a new request."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Row, Table, bindparam, delete, func, insert, select, text
from sqlalchemy.orm import Session

from service.db.models import IdempotencyRecord
from service.errors import Conflict

IDEMPOTENCY_TTL = timedelta(days=7)

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:k, :t))")
# Core statements on the table, compiled once: no ORM unit of work on the ingest path.
_TABLE = Table(IdempotencyRecord.__tablename__, IdempotencyRecord.metadata)
_INSERT = insert(_TABLE)
_FIND_LIVE = select(_TABLE.c.request_hash, _TABLE.c.status_code, _TABLE.c.response).where(
    _TABLE.c.token_id == bindparam("token_id"), _TABLE.c.key == bindparam("key"),
    _TABLE.c.created_at >= func.now() - IDEMPOTENCY_TTL)
_FORGET_KEY = delete(_TABLE).where(
    _TABLE.c.token_id == bindparam("token_id"), _TABLE.c.key == bindparam("key"),
    _TABLE.c.created_at < func.now() - IDEMPOTENCY_TTL)
# One round trip on the ingest path: the expired record's DELETE rides along as a CTE (both parts see
# one snapshot, so the SELECT's own time filter is what skips the expired row).
_FIND = _FIND_LIVE.add_cte(_FORGET_KEY.cte("expired"))


def key_reused(key: str) -> Conflict:
    return Conflict(f"Idempotency-Key {key!r} was already used for a different request; use a new key per call")


def lock_key(session: Session, *, token_id: int, key: str) -> None:
    """Hold the key (per token) until the transaction ends: concurrent retries wait for the first."""
    session.execute(_LOCK, {"k": key, "t": token_id})


def find_record(session: Session, *, token_id: int, key: str) -> Row[Any, Any, Any] | None:
    """(request_hash, status_code, response) stored under the key within its time, or None. An expired
    record under the key is deleted first, so the key can be stored anew (hold `lock_key`)."""
    return session.execute(_FIND, {"token_id": token_id, "key": key}).first()


def add_record(session: Session, *, token_id: int, key: str, method: str, path: str, request_hash: str,
               status_code: int, response: Any) -> None:
    """Store the first response (one INSERT, now: no unit-of-work flush at commit)."""
    session.execute(_INSERT, {"token_id": token_id, "key": key, "method": method, "path": path,
                              "request_hash": request_hash, "status_code": status_code, "response": response})


def forget_expired(session: Session) -> int:
    """Delete every record past `IDEMPOTENCY_TTL` (the workers' housekeeping); returns how many."""
    result = cast(CursorResult[Any], session.execute(delete(IdempotencyRecord).where(
        IdempotencyRecord.created_at < func.now() - IDEMPOTENCY_TTL)))
    return result.rowcount or 0
