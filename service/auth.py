"""API tokens: generated once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
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
