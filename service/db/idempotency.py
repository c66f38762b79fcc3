"""Stored first responses of keyed POST/PUT requests (`idempotency_keys`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.db.models import IdempotencyRecord

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:k, :t))")


def lock_key(session: Session, *, token_id: int, key: str) -> None:
    """Hold the key (per token) until the transaction ends: concurrent retries wait for the first."""
    session.execute(_LOCK, {"k": key, "t": token_id})


def find_record(session: Session, *, token_id: int, key: str) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(IdempotencyRecord.token_id == token_id, IdempotencyRecord.key == key)
    )


def add_record(session: Session, *, token_id: int, key: str, method: str, path: str, request_hash: str,
               status_code: int, response: Any) -> None:
    session.add(IdempotencyRecord(token_id=token_id, key=key, method=method, path=path, request_hash=request_hash,
                                  status_code=status_code, response=response))
