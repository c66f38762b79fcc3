"""Dependencies: settings, sessions, the caller's token."""

from __future__ import annotations

from collections.abc import Iterator
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
    project: str | None = None

    def check_may_write(self, name: str, what: str = "run") -> None:
        """Forbidden unless this token may write the run or probe set called `name` (its project)."""
        if self.project is not None and not name.startswith(self.project):
            raise Forbidden(f"token {self.name!r} may write only runs and probe sets whose names start with "
                            f"{self.project!r}; {what} {name!r} is outside its project")


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
        raise Unauthorized("invalid, expired or revoked token; ask for a new one (`forgetwatch token create`)")
    return Principal(token_id=row.id, name=row.name, scope=row.scope, project=row.project)


def check_scope(principal: Principal, needed: str) -> Principal:
    """The principal itself when its scope includes `needed`; Forbidden otherwise."""
    if not allows(principal.scope, needed):
        raise Forbidden(f"token {principal.name!r} has scope {principal.scope!r}; this call needs scope "
                        f"{needed!r} (`forgetwatch token create --scope {needed}`)")
    return principal


def check_write(principal: Principal) -> Principal:
    return check_scope(principal, "write")


# The lookup uses the request's own session (FastAPI resolves `get_session` once per request). A
# request with a body was already authenticated by the request guard, before its body was read.
def require_read(request: Request, session: Annotated[Session, Depends(get_session)],
                 authorization: Annotated[str | None, Header()] = None) -> Principal:
    known = getattr(request.state, "principal", None)
    return known if known is not None else authenticate(session, authorization)


def require_write(principal: Annotated[Principal, Depends(require_read)]) -> Principal:
    return check_scope(principal, "write")


def require_admin(principal: Annotated[Principal, Depends(require_read)]) -> Principal:
    return check_scope(principal, "admin")


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
