"""How long an `Idempotency-Key` is remembered, and forgetting expired ones.

A key replays its first response for `IDEMPOTENCY_TTL` (7 days): far longer than any client retries a
call (the trainer client's journal replays on the next start), short enough that the table does not
grow without bound. After that the key is free again: the same key then acts as a new request."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func
from sqlalchemy.orm import Session

from service.db.models import IdempotencyRecord

IDEMPOTENCY_TTL = timedelta(days=7)


def expired() -> object:
    """The SQL condition of a record past its time."""
    return IdempotencyRecord.created_at < func.now() - IDEMPOTENCY_TTL


def forget_expired(session: Session, *, token_id: int | None = None, key: str | None = None) -> int:
    """Delete expired records (all of them, or one token's key); returns how many."""
    statement = delete(IdempotencyRecord).where(expired())
    if token_id is not None and key is not None:
        statement = statement.where(IdempotencyRecord.token_id == token_id, IdempotencyRecord.key == key)
    return session.execute(statement).rowcount or 0
