"""The request guard: no body byte is read before the token is checked, and every route's body is
held to its own limit. The app is driven at the ASGI level with a body source that counts what the
server pulls, so "nothing was read" is measured, not inferred."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from service.api.guard import UPLOAD_ROUTE

CHUNK = 1 << 20  # 1 MiB
HUGE = 300 * CHUNK  # what the attack sent


@dataclass
class Exchange:
    status: int = 0
    body: bytes = b""
    pulled: int = 0  # body bytes the server asked for
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def detail(self) -> str:
        return json.loads(self.body)["detail"]


def send(app, method: str, path: str, *, token: str | None, total: int = HUGE,
         declare: bool = True) -> Exchange:
    """One request whose body is `total` bytes of JSON-ish filler, produced lazily 1 MiB at a time."""
    result = Exchange()
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if declare:
        headers.append((b"content-length", str(total).encode()))
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}

    async def receive() -> dict:
        if result.pulled >= total:
            return {"type": "http.disconnect"}
        size = min(CHUNK, total - result.pulled)
        result.pulled += size
        return {"type": "http.request", "body": b"[" * size, "more_body": result.pulled < total}

    async def reply(message: dict) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    asyncio.run(app(scope, receive, reply))
    return result


@pytest.fixture
def files_run(client: TestClient, base_model: str) -> str:
    """The attack's run: one named `files`, whose label path once skipped the body limit."""
    assert client.post("/v1/runs", json={"name": "files", "base_model": base_model}).status_code == 201
    return "files"


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
def test_huge_body_without_token_is_401_and_never_read(client: TestClient, files_run: str, declare: bool) -> None:
    reply = send(client.app, "POST", f"/v1/runs/{files_run}/labels", token=None, declare=declare)
    assert reply.status == 401
    assert reply.pulled == 0
    assert "missing token" in reply.detail
    assert reply.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/runs/files/labels"), ("POST", "/v1/runs"), ("POST", "/v1/probe-sets"),
    ("POST", "/v1/runs/files/checkpoints"), ("PUT", "/v1/runs/files/checkpoints/1/files/model.safetensors"),
    ("POST", "/no/such/route"),
])
def test_bad_or_read_token_is_refused_before_the_body(client: TestClient, tokens: dict[str, str],
                                                      method: str, path: str) -> None:
    forged = send(client.app, method, path, token="fw_not-a-real-token", declare=False)
    assert (forged.status, forged.pulled) == (401, 0)
    reader = send(client.app, method, path, token=tokens["read"], declare=False)
    assert (reader.status, reader.pulled) == (403, 0)
    assert "needs scope 'write'" in reader.detail


def test_declared_length_over_the_json_limit_is_413_unread(client: TestClient, files_run: str,
                                                           tokens: dict[str, str]) -> None:
    reply = send(client.app, "POST", f"/v1/runs/{files_run}/labels", token=tokens["write"])
    assert (reply.status, reply.pulled) == (413, 0)
    assert "FORGETWATCH_MAX_REQUEST_BYTES" in reply.detail


def test_chunked_body_is_cut_off_at_the_json_limit(client: TestClient, files_run: str, tokens: dict[str, str],
                                                   settings) -> None:
    reply = send(client.app, "POST", f"/v1/runs/{files_run}/labels", token=tokens["write"], declare=False)
    assert reply.status == 413
    assert reply.pulled <= settings.max_request_bytes + CHUNK  # one chunk past the limit, then stop


def test_the_upload_route_has_its_own_limit(client: TestClient, files_run: str, tokens: dict[str, str],
                                            settings) -> None:
    client.app.state.settings = settings.model_copy(update={"max_upload_bytes": 3 * CHUNK})
    path = f"/v1/runs/{files_run}/checkpoints/1/files/model.safetensors"
    fits = send(client.app, "PUT", path, token=tokens["write"], total=2 * CHUNK, declare=False)
    assert fits.status == 201, fits.body
    declared = send(client.app, "PUT", path.replace("model", "big"), token=tokens["write"], total=4 * CHUNK)
    assert (declared.status, declared.pulled) == (413, 0)
    assert "FORGETWATCH_MAX_UPLOAD_BYTES" in declared.detail
    streamed = send(client.app, "PUT", path.replace("model", "big"), token=tokens["write"], declare=False)
    assert streamed.status == 413
    assert streamed.pulled <= 4 * CHUNK
    kept = sorted(p.name for p in settings.uploads_dir.rglob("*") if p.is_file())
    assert kept == ["model.safetensors"]  # the cut-off upload left no file, not even a partial one


def test_a_json_route_never_gets_the_upload_limit(client: TestClient, files_run: str, tokens: dict[str, str],
                                                  settings) -> None:
    """Paths that merely contain `/files/` (a run named `files`) are JSON routes with the JSON limit."""
    client.app.state.settings = settings.model_copy(update={"max_request_bytes": CHUNK})
    for path in (f"/v1/runs/{files_run}/labels", f"/v1/runs/{files_run}/samples",
                 f"/v1/runs/{files_run}/checkpoints/files/files/x", "/v1/runs/files/files/"):
        reply = send(client.app, "POST", path, token=tokens["write"], total=2 * CHUNK)
        assert (reply.status, reply.pulled) == (413, 0), path


def test_malformed_content_length_is_400(client: TestClient, tokens: dict[str, str]) -> None:
    response = client.post("/v1/runs", content=b"{}", headers={"Content-Length": "12abc"})
    assert response.status_code == 400


def test_the_upload_template_is_a_real_route(client: TestClient) -> None:
    method, template = UPLOAD_ROUTE
    path = template.replace(":path", "")
    assert method.lower() in client.app.openapi()["paths"][path]
