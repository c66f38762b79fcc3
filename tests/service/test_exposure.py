"""Secure by default off loopback: bound to an address others can reach, the pages, /metrics, /docs
and /openapi.json need a read token unless a setting makes them public; on loopback they are open."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.api.app import create_app
from service.settings import Settings, is_loopback

OPEN_ON_LOOPBACK = ("/", "/metrics", "/docs", "/openapi.json")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "forgetwatch.internal"])
def test_reachable_addresses_need_a_read_token_for_pages_metrics_and_docs(
        settings: Settings, engine: Engine, tokens: dict[str, str], host: str) -> None:
    with TestClient(create_app(settings=settings.model_copy(update={"host": host}), engine=engine)) as client:
        for path in OPEN_ON_LOOPBACK:
            assert client.get(path).status_code == 401, path
            allowed = client.get(path, headers={"Authorization": f"Bearer {tokens['read']}"})
            assert allowed.status_code == 200, (path, allowed.text[:300])
        assert client.get("/healthz").status_code == 200  # liveness stays open: it says nothing


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_keeps_the_single_user_defaults_open(settings: Settings, engine: Engine, host: str) -> None:
    with TestClient(create_app(settings=settings.model_copy(update={"host": host}), engine=engine)) as client:
        for path in OPEN_ON_LOOPBACK:
            assert client.get(path).status_code == 200, path


def test_settings_make_parts_public_or_private_explicitly(settings: Settings, engine: Engine) -> None:
    exposed = settings.model_copy(update={"host": "0.0.0.0", "public_pages": True, "protect_metrics": False})
    with TestClient(create_app(settings=exposed, engine=engine)) as client:
        assert client.get("/").status_code == 200 and client.get("/metrics").status_code == 200
        assert client.get("/docs").status_code == 401
    closed = settings.model_copy(update={"host": "127.0.0.1", "public_pages": False, "protect_metrics": True,
                                         "public_docs": False})
    with TestClient(create_app(settings=closed, engine=engine)) as client:
        assert all(client.get(path).status_code == 401 for path in OPEN_ON_LOOPBACK)


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", " LOCALHOST "]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org", ""]))
