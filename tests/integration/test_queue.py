"""The job queue with real `forgetwatch worker` processes on the test database."""

import signal
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for, write_sparse_safetensors


def _checkpoint(client: TestClient, run_id: int, step: int) -> dict:
    return client.get(f"/v1/runs/{run_id}/checkpoints/{step}").json()


def test_worker_runs_a_checkpoint_job_to_completion(client: TestClient, settings, checkpoint_root: Path,
                                                    tmp_path: Path) -> None:
    folder = checkpoint_root / "step-1"
    folder.mkdir()
    write_sparse_safetensors(folder / "model.safetensors", 1000)
    run_id = client.post("/v1/runs", json={"name": "r", "base_model": "/a"}).json()["id"]
    job_id = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 1, "uri": str(folder)}).json()["jobs"][0]["id"]
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        wait_for(lambda: _checkpoint(client, run_id, 1)["status"] == "ready", timeout=60, what="checkpoint ready")
    finally:
        stop(worker)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_bad_checkpoint_fails_with_a_readable_message(client: TestClient, settings, checkpoint_root: Path,
                                                       tmp_path: Path) -> None:
    folder = checkpoint_root / "step-1"
    folder.mkdir()
    write_sparse_safetensors(folder / "model.safetensors", 1000)
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.truncate(500)
    run_id = client.post("/v1/runs", json={"name": "r", "base_model": "/a"}).json()["id"]
    client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 1, "uri": str(folder)})
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        failed = wait_for(lambda: (c := _checkpoint(client, run_id, 1))["status"] == "failed" and c,
                          timeout=60, what="checkpoint failed")
    finally:
        stop(worker)
    assert "truncated" in failed["error"]
    assert failed["jobs"][0]["status"] == "failed"
    assert failed["jobs"][0]["attempts"] == 1  # a bad file is not retried


def test_killed_worker_job_is_completed_once_by_another(client: TestClient, settings, engine,
                                                        checkpoint_root: Path, tmp_path: Path) -> None:
    folder = checkpoint_root / "step-1"
    folder.mkdir()
    write_sparse_safetensors(folder / "model.safetensors", 6 * 2**30)  # long enough to kill mid-read
    run_id = client.post("/v1/runs", json={"name": "r", "base_model": "/a"}).json()["id"]
    job_id = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 1, "uri": str(folder)}).json()["jobs"][0]["id"]
    env = worker_env(settings)
    first = start(["worker"], env, tmp_path / "worker1.log")
    try:
        wait_for(lambda: _checkpoint(client, run_id, 1)["status"] == "processing", timeout=60, what="job started")
    finally:
        stop(first, signal.SIGKILL)
    assert _checkpoint(client, run_id, 1)["status"] == "processing"
    second = start(["worker"], env, tmp_path / "worker2.log")
    try:
        done = wait_for(lambda: (c := _checkpoint(client, run_id, 1))["status"] in ("ready", "failed") and c,
                        timeout=180, interval=1, what="job recovered and finished")
    finally:
        stop(second)
    assert done["status"] == "ready", done
    with engine.connect() as conn:
        events = conn.execute(text("SELECT type::text FROM procrastinate_events WHERE job_id = :j ORDER BY id"),
                              {"j": job_id}).scalars().all()
        jobs = conn.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar()
    assert jobs == 1
    assert events.count("succeeded") == 1
    assert events.count("started") == 2  # once by the killed worker, once by its successor
