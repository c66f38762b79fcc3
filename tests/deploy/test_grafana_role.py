"""deploy/postgres-init/10-grafana-reader.sh, run for real (with psql) against a real PostgreSQL: the
role it makes reads forgetwatch's tables, including ones created later by the owner, and can change
nothing, create nothing, and run no program."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from service.db import migrate
from service.db.session import libpq_url
from tests.conftest import create_database, drop_database

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "postgres-init" / "10-grafana-reader.sh"


def test_the_grafana_role_reads_and_cannot_write_or_run_programs(server_url: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is missing: apt-get install postgresql-client")
    url = create_database(server_url)
    owner = psycopg.connect(libpq_url(url), autocommit=True)
    info = owner.info
    reader, password = f"grafana_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    env = {**os.environ, "PGHOST": info.host, "PGPORT": str(info.port), "POSTGRES_USER": info.user,
           "POSTGRES_DB": info.dbname, "FORGETWATCH_GRAFANA_DB_USER": reader,
           "FORGETWATCH_GRAFANA_DB_PASSWORD": password}
    try:
        done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        migrate.upgrade(url)  # tables created after the role, by the owner
        owner.execute("INSERT INTO runs (name, base_model, method) VALUES ('r', '/m', 'sft')")
        with psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=reader,
                             password=password, autocommit=True) as grafana:
            assert grafana.execute("SELECT name FROM runs").fetchall() == [("r",)]
            for statement in ("INSERT INTO runs (name, base_model, method) VALUES ('x', '/m', 'sft')",
                              "DELETE FROM runs", "CREATE TABLE mine (x int)",
                              "COPY (SELECT 1) TO PROGRAM 'true'"):
                with pytest.raises(psycopg.Error):
                    grafana.execute(statement)
    finally:
        owner.close()
        drop_database(server_url, url)
        with psycopg.connect(libpq_url(server_url), autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{reader}"')
