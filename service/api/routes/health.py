from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import OptionalReader, Refusal
from service.db.migrate import current_revision, head_revision
from service.errors import Unauthorized

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Database unreachable or migrations behind"}})
def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the database answers and its schema is at the code's migration head."""
    head = head_revision()
    try:
        current = current_revision(request.app.state.engine)
    except SQLAlchemyError as error:
        return JSONResponse({"status": "unavailable", "detail": f"database unreachable: {type(error).__name__}"},
                            status_code=503)
    if current != head:
        return JSONResponse({"status": "unavailable",
                             "detail": f"database schema at {current}, code expects {head}: run `forgetwatch migrate`"},
                            status_code=503)
    return JSONResponse({"status": "ready", "database": "ok", "migration": current})


@router.get("/metrics", response_class=Response)
def metrics(request: Request, reader: OptionalReader) -> Response:
    """Prometheus exposition (for read tokens only, unless `Settings.metrics_are_public`)."""
    if not request.app.state.settings.metrics_are_public and isinstance(reader, Refusal):
        raise Unauthorized(reader.detail)
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
