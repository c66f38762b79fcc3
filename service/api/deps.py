"""Dependencies: settings, sessions, the caller's token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.token_cache import TokenCache
from service.auth import allows, hash_token
from service.db.tokens import find_token
from service.errors import Forbidden, Unauthorized
from service.settings import Settings


# The dependencies are `async def` so that FastAPI does not hop to a worker thread for each of them;
# the only blocking call (a token lookup the cache cannot answer) goes to the thread pool itself.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's one session. Creating it does no I/O; closing it does only while a transaction
    is still open (an error before commit), and then in the thread pool."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


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


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; Unauthorized when absent or malformed."""
    if not authorization:
        raise Unauthorized(
            "missing token: send 'Authorization: Bearer <token>' "
            "(create one with `forgetwatch token create --name NAME --scope write`)"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    return token.strip()


async def principal_of(cache: TokenCache[Principal], authorization: str | None,
                       lookup: Callable[[], Principal]) -> Principal:
    """The caller: from the token cache (no thread, no database), else by `lookup` (`authenticate` on
    some session) in a worker thread, once for all requests that miss the same token together."""
    return await cache.look_up_once(hash_token(bearer_token(authorization)), lambda: run_in_threadpool(lookup))


def authenticate(session: Session, authorization: str | None, *,
                 cache: TokenCache[Principal] | None = None) -> Principal:
    """The caller behind an `Authorization: Bearer <token>` header; Unauthorized otherwise. With a
    `cache`, a token accepted within its TTL is not looked up again (`service.api.token_cache`)."""
    token = bearer_token(authorization)
    key = hash_token(token)
    if cache is not None and (known := cache.get(key)) is not None:
        return known
    row = find_token(session, token)
    if row is None:
        raise Unauthorized("invalid, expired or revoked token; ask for a new one (`forgetwatch token create`)")
    principal = Principal(token_id=row.id, name=row.name, scope=row.scope, project=row.project)
    if cache is not None:
        cache.put(key, principal, expires_at=row.expires_at)
    return principal


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
async def require_read(request: Request, session: Annotated[Session, Depends(get_session)],
                       authorization: Annotated[str | None, Header()] = None) -> Principal:
    known = getattr(request.state, "principal", None)
    if known is not None:
        return known
    cache = request.app.state.token_cache
    return await principal_of(cache, authorization, lambda: authenticate(session, authorization, cache=cache))


@dataclass(frozen=True)
class Refusal:
    """Why a request has no reader (no token, or one the database refuses)."""

    detail: str


async def optional_reader(request: Request, session: Annotated[Session, Depends(get_session)],
                          authorization: Annotated[str | None, Header()] = None) -> Principal | Refusal:
    """For routes that serve some callers without a token (the pages, /metrics) and decide which
    themselves: the caller, by the same lookup and cache as `Reader`, or why there is none."""
    try:
        return await require_read(request, session, authorization)
    except Unauthorized as refused:
        return Refusal(refused.detail)


async def require_write(principal: Annotated[Principal, Depends(require_read)]) -> Principal:
    return check_scope(principal, "write")


async def require_admin(principal: Annotated[Principal, Depends(require_read)]) -> Principal:
    return check_scope(principal, "admin")


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
Reader = Annotated[Principal, Depends(require_read)]
OptionalReader = Annotated[Principal | Refusal, Depends(optional_reader)]
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
