"""The memory-exhaustion attack against a real `forgetwatch serve` (uvicorn) process: a 300 MB body
with no token to `POST /v1/runs/files/labels`. The server must answer without reading the body, and
its peak resident memory (VmHWM) must stay within a bound far below the body's size."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from service.db.session import make_sessionmaker
from service.db.tokens import create_token
from tests.integration.helpers import served_port, start, stop, wait_for

MiB = 1 << 20
BODY = 300 * MiB
RSS_BOUND = 64 * MiB  # what the server's peak may grow by; the unguarded server grew by ~600 MiB


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def server(settings, engine: Engine, checkpoint_root: Path, base_model: str, tmp_path: Path) -> Iterator[tuple[int, int, str]]:
    """(port, pid, write token) of `forgetwatch serve --no-worker` on the test's database."""
    with make_sessionmaker(engine)() as session:
        token = create_token(session, name="attack-test", scope="write")
        session.commit()
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": settings.database_url,
           "FORGETWATCH_DATA_DIR": str(settings.data_dir), "FORGETWATCH_CHECKPOINT_ROOTS": str(checkpoint_root)}
    process = start(["serve", "--no-worker", "--port", "0"], env, tmp_path / "serve.log")
    try:
        port = served_port(tmp_path / "serve.log")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base), timeout=90, what="serve ready")
        created = httpx.post(base + "/v1/runs", json={"name": "files", "base_model": base_model},
                             headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201
        yield port, process.pid, token
    finally:
        stop(process)


def _attack(port: int, *, chunked: bool, token: str | None = None) -> tuple[bytes, int]:
    """Stream a BODY-byte request as fast as the server takes it; (response head, bytes it accepted)."""
    head = [b"POST /v1/runs/files/labels HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json"]
    head.append(b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY}".encode())
    if token:
        head.append(f"Authorization: Bearer {token}".encode())
    block = b"[" * MiB
    frame = (b"%x\r\n" % MiB + block + b"\r\n") if chunked else block
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
    sock.setblocking(False)
    pending, sent, response = memoryview(b""), 0, b""
    deadline = time.monotonic() + 120
    try:
        while sent < BODY and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                response = sock.recv(65536)
                break
            if not writable:
                break  # the server neither reads nor answers: it stopped taking the body
            if not pending:
                pending = memoryview(frame)
            try:
                n = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            pending, sent = pending[n:], sent + n
        sock.setblocking(True)
        sock.settimeout(30)
        while b"\r\n\r\n" not in response:
            more = sock.recv(65536)
            if not more:
                break
            response += more
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    return response.partition(b"\r\n\r\n")[0], sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_huge_unauthenticated_body_is_refused_with_bounded_memory(server, chunked: bool) -> None:
    port, pid, _ = server
    before = _peak_rss(pid)
    head, sent = _attack(port, chunked=chunked)
    assert head.startswith(b"HTTP/1.1 401"), head
    assert sent < BODY // 4  # at most socket buffers' worth: the server never read the body
    assert _peak_rss(pid) - before < RSS_BOUND


def test_huge_authenticated_chunked_body_is_cut_off_at_the_limit(server) -> None:
    port, pid, token = server
    before = _peak_rss(pid)
    head, sent = _attack(port, chunked=True, token=token)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert sent < BODY // 4
    assert _peak_rss(pid) - before < RSS_BOUND
