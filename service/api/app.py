"""The application factory: everything is passed in, nothing is read from the environment here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.guard import RequestGuard
from service.api.middleware import RequestMetricsMiddleware
from service.api.routes import (
    checkpoints,
    compare,
    health,
    jobs,
    param_drift,
    probe_sets,
    protected_docs,
    response_drift,
    run_status,
    runs,
    samples,
    stages,
    training_metrics,
)
from service.api.schemas import Problem
from service.api.token_cache import TokenCache
from service.db import ingest
from service.db.session import libpq_url, make_sessionmaker
from service.errors import ForgetwatchError
from service.metrics import build_registry
from service.settings import Settings
from service.web import compare_page, pages

log = logging.getLogger("forgetwatch")

# Connections of one API process's ingest pool (`service.db.ingest`), beside its engine's: requests
# past them wait in the event loop, which costs nothing, instead of opening connections.
INGEST_CONNECTIONS = 10

# Every /v1 operation documents the errors it can return; bodies are {"detail": ...}.
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": Problem, "description": text}
    for code, text in ((400, "Malformed request (e.g. invalid UTF-8)"), (401, "Missing or invalid token"),
                       (403, "Token scope or path not allowed"), (404, "Unknown run, step, probe set or job"),
                       (409, "Conflicts with what is stored"), (413, "Too large"), (422, "Invalid body or parameters"),
                       (503, "Database unavailable; retry"), (507, "Out of disk space"))
}


def create_app(*, settings: Settings, engine: Engine, run_worker: bool = False) -> FastAPI:
    """Build the API. With `run_worker`, a procrastinate worker runs inside the same process."""
    registry, request_metrics, job_metrics = build_registry(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ingest_pool = ingest.open_pool(libpq_url(engine.url.render_as_string(hide_password=False)),
                                                 max_size=INGEST_CONNECTIONS)
        await app.state.ingest_pool.open()
        worker = None
        if run_worker:
            import transformers  # noqa: F401 - once, before job threads (concurrent first imports can fail)

            from service.queue.app import create_queue_app
            from service.queue.tasks import WorkerServices
            from service.queue.worker import run_worker as worker_main

            services = WorkerServices(settings=settings, engine=engine, sessions=app.state.sessions)
            queue_app = create_queue_app(engine.url.render_as_string(hide_password=False))
            worker = asyncio.create_task(worker_main(queue_app, services, install_signal_handlers=False,
                                                     job_metrics=job_metrics))
        try:
            yield
        finally:
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            await app.state.ingest_pool.close()

    open_docs = settings.docs_are_public
    app = FastAPI(
        title="forgetwatch",
        version="1",
        summary="Forgetting and drift monitoring for continual post-training",
        lifespan=lifespan,
        openapi_url="/openapi.json" if open_docs else None,
        docs_url="/docs" if open_docs else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.registry = registry
    app.state.token_cache = TokenCache(settings.token_cache_seconds)
    app.include_router(health.router)
    for module in (samples, checkpoints, training_metrics, runs, run_status, probe_sets, jobs, param_drift,
                   response_drift, compare, stages):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(pages.router)
    app.include_router(compare_page.router)
    if not open_docs:
        app.include_router(protected_docs.router)
    install_error_handlers(app)
    app.add_middleware(RequestGuard)  # inside the metrics: refusals are counted too
    app.add_middleware(RequestMetricsMiddleware, metrics=request_metrics)
    return app


def settle(app: FastAPI) -> FastAPI:
    """Ready a server process's app to serve: its schema built now, not by the first request for it,
    and what lives as long as the process (some 240k objects: modules, the app, its schema) frozen out
    of the garbage collector's sight. A full collection then scans only what requests made since, in
    milliseconds, where it stalled every request of the process for 0.1-0.7 s (measured under load)."""
    app.openapi()
    gc.collect()
    gc.freeze()
    return app


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers at the request's path (one route per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """One place maps errors to statuses; every error body is JSON with a readable `detail`."""

    @app.exception_handler(ForgetwatchError)
    async def domain_error(_: Request, error: ForgetwatchError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in error.errors()
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = error.headers
        if error.status_code == 405:  # every method of the path, not only those of the first route matched
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=headers)

    async def database_down(_: Request, error: Exception) -> JSONResponse:
        log.warning("action=database_unavailable error=%s", type(error).__name__)
        return JSONResponse(
            {"detail": "database unavailable; nothing was stored. Retry with the same Idempotency-Key"},
            status_code=503, headers={"Retry-After": "5"},
        )

    for kind in (OperationalError, InterfaceError, PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError,
                 psycopg_pool.PoolTimeout):
        app.add_exception_handler(kind, database_down)

    @app.exception_handler(DataError)
    async def unstorable(_: Request, error: DataError) -> JSONResponse:
        return JSONResponse({"detail": f"a value cannot be stored: {str(error.orig).splitlines()[0]}"},
                            status_code=422)

    @app.exception_handler(psycopg.DataError)
    async def unstorable_on_ingest(_: Request, error: psycopg.DataError) -> JSONResponse:
        return JSONResponse({"detail": f"a value cannot be stored: {str(error).splitlines()[0]}"}, status_code=422)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, error: DBAPIError) -> JSONResponse:
        if error.connection_invalidated:
            return await database_down(request, error)
        return await unexpected(request, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("action=unhandled_error route=%s", request.url.path)
        return JSONResponse({"detail": "internal error; the service log has the details"}, status_code=500)
