"""API tokens: generated once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import ApiToken

# Each scope includes the ones before it: admin can also write, write can also read.
SCOPES = ("read", "write", "admin")


def allows(scope: str, needed: str) -> bool:
    return scope in SCOPES and SCOPES.index(scope) >= SCOPES.index(needed)


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough; nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str, scope: str) -> str:
    """Store a new token's hash and return the token itself (shown once)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    token = "fw_" + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, scope=scope, token_hash=hash_token(token)))
    session.flush()
    return token


def find_token(session: Session, token: str) -> ApiToken | None:
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token ever created (hashes stay in the database), oldest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, *, ref: str) -> ApiToken:
    """Revoke the token with id or name `ref` (a name must be unique); it is refused from the next
    request on. Revoking twice keeps the first time. Raises ValueError with what to do."""
    if ref.isdigit():
        rows = [row for row in [session.get(ApiToken, int(ref))] if row is not None]
    else:
        rows = list(session.scalars(select(ApiToken).where(ApiToken.name == ref)))
    if not rows:
        raise ValueError(f"no token with id or name {ref!r}; `forgetwatch token list` shows them")
    if len(rows) > 1:
        raise ValueError(f"{len(rows)} tokens are named {ref!r}; revoke one by its id (`forgetwatch token list`)")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = session.scalar(select(func.now()))
        session.flush()
    return row
