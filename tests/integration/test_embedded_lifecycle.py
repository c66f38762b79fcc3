"""The embedded PostgreSQL lives exactly as long as `forgetwatch serve`: a signal to the service stops
it, and one left behind by a killed service is adopted by the next start and stopped with it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import postmasters, served_port, start, wait_for


def _serve(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "FORGETWATCH_DATABASE_URL"}
    env["FORGETWATCH_DATA_DIR"] = str(tmp_path / "data")
    log = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log"
    process = start(["serve", "--port", "0"], env, log)
    base = f"http://127.0.0.1:{served_port(log)}"

    def ready() -> bool:
        try:
            return httpx.get(base + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None  # died: stop waiting, the assertion below says why

    wait_for(ready, timeout=90, what="embedded serve ready")
    assert process.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
    return process, base


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_serve_stops_its_embedded_postgres(tmp_path: Path, sig: signal.Signals) -> None:
    pgdata = (tmp_path / "data" / "pg").resolve()
    process, _ = _serve(tmp_path)
    assert len(postmasters(pgdata)) == 1
    os.kill(process.pid, sig)  # the service alone, as `kill PID` or systemd's stop would
    assert process.wait(timeout=60) in (0, 128 + sig, -sig)
    wait_for(lambda: not postmasters(pgdata), timeout=30, what="embedded PostgreSQL stopped")


def test_a_server_left_by_a_killed_service_is_adopted_then_stopped(tmp_path: Path) -> None:
    pgdata = (tmp_path / "data" / "pg").resolve()
    process, _ = _serve(tmp_path)
    os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: its server stays behind
    process.wait(timeout=30)
    orphan = postmasters(pgdata)
    assert len(orphan) == 1

    process, base = _serve(tmp_path)  # the next start uses the same data dir
    token = (tmp_path / "data" / "local-token").read_text().strip()
    assert httpx.get(base + "/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    wait_for(lambda: not postmasters(pgdata), timeout=30, what="adopted PostgreSQL stopped")
