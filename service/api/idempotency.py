"""Idempotency keys: the first response to a keyed POST/PUT is stored in the same transaction as
its effects, so a retry (after a timeout, a crash, a lost reply) replays it and creates nothing.

`run_idempotent` is optimistic: it looks the key up without a lock, runs the action and stores the
response. Two requests with one key at the same time both run; the key's primary key makes the
second one's INSERT wait for the first transaction, and fail once it commits, so the second rolls
back everything it did and replays the first's response. An action that fails (a step registered
by the first, say) looks the key up the same way before answering. The ingest path saves the lock's
round trip; uploads (`replay`) still lock, since their files are moved outside the transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.api.deps import Principal
from service.db import idempotency as store
from service.errors import ForgetwatchError


def request_fingerprint(method: str, path: str, payload: str) -> str:
    return hashlib.sha256(f"{method} {path}\n{payload}".encode()).hexdigest()


def replay(session: Session, *, principal: Principal, key: str, fingerprint: str,
           lock: bool = True) -> JSONResponse | None:
    """The stored response for this key, or None. With `lock`, holds the key until the transaction
    ends (a concurrent first request with the key is waited for)."""
    if lock:
        store.lock_key(session, token_id=principal.token_id, key=key)
    record = store.find_record(session, token_id=principal.token_id, key=key)
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise store.key_reused(key)
    return JSONResponse(record.response, status_code=record.status_code)


def remember(
    session: Session, *, principal: Principal, key: str, fingerprint: str, method: str, path: str,
    status_code: int, body: Any,
) -> None:
    store.add_record(session, token_id=principal.token_id, key=key, method=method, path=path,
                     request_hash=fingerprint, status_code=status_code, response=body)


def run_idempotent(
    session: Session,
    *,
    principal: Principal,
    key: str | None,
    method: str,
    path: str,
    payload: str,
    action: Callable[[], tuple[int, Any]],
) -> JSONResponse:
    """Run `action` (which writes through `session`) and commit, once per key (see the module)."""
    fingerprint = request_fingerprint(method, path, payload)
    if key is None:
        status_code, body = action()
        body = jsonable_encoder(body)
        session.commit()
        return JSONResponse(body, status_code=status_code)
    stored = replay(session, principal=principal, key=key, fingerprint=fingerprint, lock=False)
    if stored is not None:
        session.rollback()
        return stored
    try:
        status_code, body = action()
        body = jsonable_encoder(body)
        remember(session, principal=principal, key=key, fingerprint=fingerprint, method=method, path=path,
                 status_code=status_code, body=body)
        session.commit()
    except (IntegrityError, ForgetwatchError):
        session.rollback()  # a first request with this key may have committed meanwhile: answer as it did
        stored = replay(session, principal=principal, key=key, fingerprint=fingerprint)
        session.rollback()
        if stored is not None:
            return stored
        raise
    return JSONResponse(body, status_code=status_code)
