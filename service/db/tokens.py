"""API tokens in the database: generated once, stored only as a SHA-256 hash."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.auth import SCOPES, hash_token
from service.db.models import ApiToken


def create_token(session: Session, *, name: str, scope: str, expires_at: datetime | None = None,
                 project: str | None = None) -> str:
    """Store a new token's hash and return the token itself (shown once). `expires_at` (timezone
    aware): refused from then on; None: until revoked. `project`: a name prefix; the token may then
    write only runs and probe sets whose names start with it (it still reads everything)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    if project is not None and not project.strip():
        raise ValueError("--project must be a non-empty name prefix, e.g. 'team-a-'")
    token = "fw_" + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, scope=scope, token_hash=hash_token(token), expires_at=expires_at,
                         project=project))
    session.flush()
    return token


def find_token(session: Session, token: str) -> ApiToken | None:
    """The token's row while it is neither revoked nor expired (by the database's clock)."""
    return session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None),
                               or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()))
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
