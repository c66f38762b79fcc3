"""`forgetwatch serve` as a user runs it: the embedded default, and an external database."""

import json
import os
import subprocess
from pathlib import Path

import httpx

from tests.conftest import make_base_model
from tests.integration.helpers import FORGETWATCH, served_port, start, stop, wait_for


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_embedded_serve_comes_up_and_keeps_data_across_restart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FORGETWATCH_DATABASE_URL"}
    env["FORGETWATCH_DATA_DIR"] = str(tmp_path / "data")
    args = ["serve", "--port", "0"]
    base_model = str(make_base_model(tmp_path / "data" / "checkpoints" / "base"))  # always an allowed root

    server = start(args, env, tmp_path / "serve.log")
    try:
        base = f"http://127.0.0.1:{served_port(tmp_path / 'serve.log')}"
        wait_for(lambda: _ready(base), timeout=90, what="embedded serve ready")
        token_file = tmp_path / "data" / "local-token"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        created = httpx.post(base + "/v1/runs", json={"name": "kept", "base_model": base_model}, headers=headers)
        assert created.status_code == 201
    finally:
        stop(server)

    server = start(args, env, tmp_path / "serve-again.log")
    try:
        base = f"http://127.0.0.1:{served_port(tmp_path / 'serve-again.log')}"
        wait_for(lambda: _ready(base), timeout=90, what="embedded serve ready after restart")
        runs = httpx.get(base + "/v1/runs", headers=headers).json()
        assert [r["name"] for r in runs] == ["kept"]
    finally:
        stop(server)
    log = (tmp_path / "serve.log").read_text() + (tmp_path / "serve-again.log").read_text()
    assert token_file.read_text().strip() not in log


def test_serve_refuses_an_external_database_behind_head(empty_database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": empty_database_url,
           "FORGETWATCH_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([FORGETWATCH, "serve", "--port", "0"], check=False, env=env,
                            capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "forgetwatch migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_then_token_create_on_external_database(empty_database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": empty_database_url,
           "FORGETWATCH_DATA_DIR": str(tmp_path / "data")}
    subprocess.run([FORGETWATCH, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    made = subprocess.run([FORGETWATCH, "token", "create", "--name", "ci", "--scope", "read"], env=env,
                          check=True, capture_output=True, text=True, timeout=60)
    token = made.stdout.strip()
    assert token.startswith("fw_") and len(token) > 30


def test_runs_commands_list_show_archive_and_delete(database_url: str, engine, tmp_path: Path) -> None:
    from service.db import queries
    from service.db.session import make_sessionmaker

    with make_sessionmaker(engine)() as session:
        for name, method in (("cli-a", "sft"), ("cli-b", "grpo")):
            queries.create_run(session, name=name, base_model="/m", method=method, tags={}, probe_sets=[])
        session.commit()
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": database_url, "FORGETWATCH_DATA_DIR": str(tmp_path / "data")}

    def forgetwatch(*args: str) -> str:
        done = subprocess.run([FORGETWATCH, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = forgetwatch("runs", "list")
    assert "cli-a" in listed and "cli-b" in listed
    assert json.loads(forgetwatch("runs", "show", "cli-b"))["method"] == "grpo"
    forgetwatch("runs", "archive", "cli-a")
    assert "cli-a" not in forgetwatch("runs", "list") and "cli-a" in forgetwatch("runs", "list", "--archived")
    forgetwatch("runs", "delete", "cli-a", "--yes")
    assert "cli-a" not in forgetwatch("runs", "list", "--archived")
    missing = subprocess.run([FORGETWATCH, "runs", "show", "cli-a"], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert missing.returncode != 0 and "no run 'cli-a'" in missing.stderr and "Traceback" not in missing.stderr
    assert forgetwatch("--version").startswith("forgetwatch ")
