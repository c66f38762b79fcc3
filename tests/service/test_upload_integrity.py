"""Uploaded files cannot be lost or replaced once acknowledged: idempotency keys are bound to the
content, and a registered step's files are immutable, even for a PUT that began before registration."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

CHUNK = 64 * 1024


@pytest.fixture
def run(client: TestClient, base_model: str) -> str:
    assert client.post("/v1/runs", json={"name": "r", "base_model": base_model}).status_code == 201
    return "r"


def _stored(settings, name: str) -> bytes:
    (path,) = [p for p in settings.uploads_dir.rglob(name) if p.is_file()]
    return path.read_bytes()


def test_same_key_and_length_with_other_bytes_is_409_and_keeps_the_first(client: TestClient, run: str,
                                                                          settings) -> None:
    url = f"/v1/runs/{run}/checkpoints/3/files/model.safetensors"
    first = client.put(url, content=b"a" * 1000, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    other = client.put(url, content=b"b" * 1000, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409
    assert "already used for a different request" in other.json()["detail"]
    assert _stored(settings, "model.safetensors") == b"a" * 1000


def test_a_retry_with_the_same_bytes_replays_and_keeps_one_file(client: TestClient, run: str, settings) -> None:
    url = f"/v1/runs/{run}/checkpoints/3/files/model.safetensors"
    responses = [client.put(url, content=b"a" * 1000, headers={"Idempotency-Key": "k1"}) for _ in range(2)]
    assert [r.status_code for r in responses] == [201, 201]
    assert responses[0].json() == responses[1].json()
    files = [p.name for p in settings.uploads_dir.rglob("*") if p.is_file()]
    assert files == ["model.safetensors"]  # no partial files left behind


def test_a_registered_step_refuses_new_files(client: TestClient, run: str, settings) -> None:
    base = f"/v1/runs/{run}/checkpoints/3/files"
    assert client.put(f"{base}/model.safetensors", content=b"a" * 100).status_code == 201
    assert client.post(f"/v1/runs/{run}/checkpoints", json={"step": 3}).status_code == 202
    late = client.put(f"{base}/model.safetensors", content=b"evil")
    assert late.status_code == 409
    assert _stored(settings, "model.safetensors") == b"a" * 100


def test_a_put_that_began_before_registration_cannot_replace_registered_files(
        client: TestClient, run: str, tokens: dict[str, str], settings) -> None:
    """The PUT streams its first chunk, the step is registered, then the PUT completes: 409, and the
    registered checkpoint keeps exactly the bytes it was registered with."""
    base = f"/v1/runs/{run}/checkpoints/3/files"
    assert client.put(f"{base}/model.safetensors", content=b"a" * 100).status_code == 201
    chunks = [b"e" * CHUNK, b"v" * CHUNK]
    registered = []

    async def receive() -> dict:
        if len(chunks) == 1 and not registered:  # mid-upload: someone registers the step
            registered.append(client.post(f"/v1/runs/{run}/checkpoints", json={"step": 3}).status_code)
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    reply: dict = {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            reply["status"] = message["status"]

    path = f"{base}/model.safetensors"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {tokens['write']}".encode())],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert registered == [202]
    assert reply["status"] == 409
    assert _stored(settings, "model.safetensors") == b"a" * 100
    assert not [p for p in Path(settings.uploads_dir).rglob("*.part")]
