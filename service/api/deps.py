"""Dependencies: settings, sessions, the caller's token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from service.auth import allows, find_token
from service.errors import Forbidden, Unauthorized
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    scope: str


def authenticate(session: Session, authorization: str | None) -> Principal:
    """The caller behind an `Authorization: Bearer <token>` header; Unauthorized otherwise."""
    if not authorization:
        raise Unauthorized(
            "missing token: send 'Authorization: Bearer <token>' "
            "(create one with `forgetwatch token create --name NAME --scope write`)"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    row = find_token(session, token.strip())
    if row is None:
        raise Unauthorized("invalid or revoked token")
    return Principal(token_id=row.id, name=row.name, scope=row.scope)


# The lookup uses the request's own session (FastAPI resolves `get_session` once per request).
def require_read(session: Annotated[Session, Depends(get_session)],
                 authorization: Annotated[str | None, Header()] = None) -> Principal:
    return authenticate(session, authorization)


def _require(needed: str) -> Callable[..., Principal]:
    def require(session: Annotated[Session, Depends(get_session)],
                authorization: Annotated[str | None, Header()] = None) -> Principal:
        principal = authenticate(session, authorization)
        if not allows(principal.scope, needed):
            raise Forbidden(f"token {principal.name!r} has scope {principal.scope!r}; this call needs a "
                            f"{needed!r} token (`forgetwatch token create --scope {needed}`)")
        return principal
    return require


require_write = _require("write")
require_admin = _require("admin")


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
Reader = Annotated[Principal, Depends(require_read)]
Writer = Annotated[Principal, Depends(require_write)]
Admin = Annotated[Principal, Depends(require_admin)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retries with the same key replay the first response and create nothing new",
    ),
]
