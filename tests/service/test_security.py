"""Scopes on every route, walked from the app's own route table."""

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.db.session import make_sessionmaker
from service.db.tokens import create_token

OPEN = {"/healthz", "/readyz", "/metrics", "/", "/runs/{name}"}


def _routes(client: TestClient) -> list[tuple[str, str]]:
    """Every documented operation, path parameters filled in."""
    found = []
    for path, operations in client.app.openapi()["paths"].items():
        if path not in OPEN:
            found += [(method.upper(), re.sub(r"\{[^}]+\}", "1", path)) for method in operations]
    return sorted(found)


def test_every_data_route_is_covered(client: TestClient) -> None:
    methods = {m for m, _ in _routes(client)}
    assert {"GET", "POST", "PUT"} <= methods and len(_routes(client)) >= 15


ADMIN_ONLY = {("DELETE", "/v1/runs/1")}


@pytest.mark.parametrize("who", ["nobody", "reader", "writer", "admin"])
def test_scopes_are_enforced_on_every_route(client: TestClient, engine: Engine, tokens: dict[str, str],
                                            who: str) -> None:
    with make_sessionmaker(engine)() as session:
        tokens = {**tokens, "admin": create_token(session, name="admin", scope="admin")}
        session.commit()
    headers = {"nobody": {"Authorization": ""}, "reader": {"Authorization": f"Bearer {tokens['read']}"},
               "writer": {"Authorization": f"Bearer {tokens['write']}"},
               "admin": {"Authorization": f"Bearer {tokens['admin']}"}}[who]
    routes = _routes(client)
    assert ADMIN_ONLY <= set(routes)
    for method, path in routes:
        status = client.request(method, path, json={}, headers=headers).status_code
        if who == "nobody":
            assert status == 401, (method, path, status)
        elif (who == "reader" and method != "GET") or (who == "writer" and (method, path) in ADMIN_ONLY):
            assert status == 403, (method, path, status)
        else:
            assert status not in (401, 403, 500), (method, path, status)
