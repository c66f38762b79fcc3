"""`/openapi.json` and `/docs` behind a read token, for a service reachable from other machines
(`Settings.docs_are_public` false). The interactive page asks the browser for nothing: pass the token
as a header (e.g. with a proxy or `curl`), since the page itself loads `/openapi.json`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from service.api.deps import Reader

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
def openapi(request: Request, _: Reader) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def docs(_: Reader) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="forgetwatch API")
