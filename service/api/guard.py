"""The request guard: runs before routing and before any byte of a request body is read.

1. Every request that may carry a body (any method but GET, HEAD, OPTIONS) must present a valid
   write token; the token is checked from the headers alone, so a caller without one is answered
   401 (or 403 for a read token) while its body is still unread on the socket. A token limited to a
   project may write under `/v1/runs/{run}` only for runs of its project (403 otherwise).
2. Every request is held to the body limit of the exact route it matches (route template and
   method, not a substring of the path): the upload route gets `FORGETWATCH_MAX_UPLOAD_BYTES`,
   everything else `FORGETWATCH_MAX_REQUEST_BYTES`. A declared `Content-Length` over the limit is
   answered 413 unread; a chunked body is counted as it streams and cut off at the limit.

The authenticated principal is left in the request state, so the route's `Writer` dependency does
not look the token up a second time. Tokens the database accepted are cached for a few seconds
(`service.api.token_cache`: revocation honoured within `FORGETWATCH_TOKEN_CACHE_SECONDS`, expiry exactly).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

import anyio
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import Principal, authenticate, check_write, principal_of
from service.db import queries
from service.errors import ForgetwatchError, NotFound
from service.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The one route whose body is a file stream with its own limit (method, template).
UPLOAD_ROUTE = ("PUT", "/v1/runs/{run_ref}/checkpoints/{step}/files/{filename:path}")
_UPLOAD_PATH = compile_path(UPLOAD_ROUTE[1])[0]


_RUN_PATH = re.compile(r"^/v1/runs/([^/]+)(?:/|$)")


def _run_in_path(path: str) -> str | None:
    """The run a `/v1/runs/{run}/...` path names (by name or id), for the project check of a write."""
    found = _RUN_PATH.match(path)
    return unquote(found.group(1)) if found else None


async def _check_project(app: Any, principal: Principal, path: str) -> None:
    """Forbidden when a project token writes under `/v1/runs/{run}` for a run outside its project. A run
    named in the path is checked as it is; one given by id is looked up (unknown: the route says 404)."""
    run_ref = _run_in_path(path)
    if run_ref is None:
        return  # creating runs and probe sets is checked by their routes, on the body's name
    if run_ref.isascii() and run_ref.isdigit():

        def name_of() -> str | None:
            with app.state.sessions() as session:
                try:
                    return queries.get_run(session, ref=run_ref).name
                except NotFound:
                    return None

        run_ref = await anyio.to_thread.run_sync(name_of)
        if run_ref is None:
            return
    principal.check_may_write(run_ref)


def body_limit(settings: Settings, scope: Scope) -> tuple[int, str]:
    """(limit in bytes, the setting that sets it) for this request's exact route."""
    if scope["method"] == UPLOAD_ROUTE[0] and _UPLOAD_PATH.match(scope["path"]):
        return settings.max_upload_bytes, "FORGETWATCH_MAX_UPLOAD_BYTES"
    return settings.max_request_bytes, "FORGETWATCH_MAX_REQUEST_BYTES"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value
    return None


class RequestGuard:
    """Authentication and body limits ahead of routing (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        if scope["method"] not in SAFE_METHODS:
            refusal = await self._authenticate(app, scope)
            if refusal is not None:
                await _answer(send, *refusal)
                return
        limit, setting = body_limit(app.state.settings, scope)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status = 413 if declared.isdigit() else 400
            await _answer(send, status, _too_large(limit, setting) if status == 413 else "malformed Content-Length")
            return
        received = 0
        exceeded = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True  # the app sees a disconnect; the client gets 413
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                if not started:
                    started = True
                    await _answer(send, 413, _too_large(limit, setting))
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
        if exceeded and not started:
            await _answer(send, 413, _too_large(limit, setting))

    async def _authenticate(self, app, scope: Scope) -> tuple[int, str] | None:
        """None when the headers carry a write token (stored in the request state), else (status, detail)."""
        raw = _header(scope, b"authorization")
        authorization = raw.decode("latin-1") if raw is not None else None
        cache = app.state.token_cache

        def lookup():
            with app.state.sessions() as session:
                return authenticate(session, authorization, cache=cache)

        try:
            principal = await principal_of(cache, authorization, lookup)
            check_write(principal)
            if principal.project is not None:
                await _check_project(app, principal, scope["path"])
        except ForgetwatchError as error:
            return error.status_code, error.detail
        except (OperationalError, InterfaceError, PoolTimeout):
            return 503, "database unavailable; nothing was stored. Retry with the same Idempotency-Key"
        scope.setdefault("state", {})["principal"] = principal
        return None


def _too_large(limit: int, setting: str) -> str:
    return f"request body over {limit} bytes ({setting}); send smaller batches or files"


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if status == 503:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
