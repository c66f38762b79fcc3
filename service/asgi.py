"""Entry point for several API processes: `uvicorn service.asgi:app_from_environment --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from service.api.app import create_app, settle
from service.db.session import make_engine
from service.settings import Settings


def app_from_environment() -> FastAPI:
    settings = Settings.from_environment()
    if not settings.database_url:
        raise SystemExit("service.asgi needs FORGETWATCH_DATABASE_URL (an external PostgreSQL)")
    return settle(create_app(settings=settings, engine=make_engine(settings.database_url, pre_ping=False)))
