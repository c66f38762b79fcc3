"""A server process settles its app before serving: the schema is built and the long-lived objects are
frozen out of the garbage collector's sight (a full collection scanned ~240k of them per pause)."""

from __future__ import annotations

import gc

from sqlalchemy import Engine

from service.api.app import create_app, settle
from service.settings import Settings


def test_settle_builds_the_schema_and_freezes_what_lives_as_long_as_the_process(settings: Settings,
                                                                                engine: Engine) -> None:
    app = create_app(settings=settings, engine=engine)
    assert app.openapi_schema is None
    try:
        assert settle(app) is app
        assert app.openapi_schema is not None and "/v1/runs/{run_ref}/samples" in app.openapi_schema["paths"]
        assert gc.get_freeze_count() > 50_000
    finally:
        gc.unfreeze()  # this test process is no server: give its objects back to the collector
