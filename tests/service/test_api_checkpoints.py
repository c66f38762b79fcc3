import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def run_id(client: TestClient, base_model: str) -> int:
    return client.post("/v1/runs", json={"name": "r", "base_model": base_model}).json()["id"]


@pytest.fixture
def checkpoint_dir(checkpoint_root: Path) -> Path:
    folder = checkpoint_root / "step-10"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    return folder


def test_register_checkpoint_is_202_with_jobs(client: TestClient, run_id: int, checkpoint_dir: Path) -> None:
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 10, "uri": str(checkpoint_dir)})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending" and body["size_bytes"] == 100
    assert [j["status"] for j in body["jobs"]] == ["todo"]
    job = client.get(f"/v1/jobs/{body['jobs'][0]['id']}").json()
    assert job["args"] == {"checkpoint_id": body["id"]}


def test_file_uri_is_accepted(client: TestClient, run_id: int, checkpoint_dir: Path) -> None:
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 10, "uri": f"file://{checkpoint_dir}"})
    assert response.status_code == 202


def test_same_step_same_uri_is_200_different_uri_409(client: TestClient, run_id: int,
                                                      checkpoint_dir: Path, checkpoint_root: Path) -> None:
    url = f"/v1/runs/{run_id}/checkpoints"
    client.post(url, json={"step": 10, "uri": str(checkpoint_dir)})
    assert client.post(url, json={"step": 10, "uri": str(checkpoint_dir)}).status_code == 200
    other = checkpoint_root / "other"
    other.mkdir()
    assert client.post(url, json={"step": 10, "uri": str(other)}).status_code == 409


@pytest.mark.parametrize("uri", ["/etc", "{root}/../../etc", "file:///etc/passwd", "file://evil.example/x",
                                 "{root}/link", "s3://bucket/ckpt", "gs://bucket/ckpt"])
def test_paths_outside_roots_are_403(client: TestClient, run_id: int, checkpoint_root: Path, uri: str) -> None:
    os.symlink("/etc", checkpoint_root / "link")
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 1, "uri": uri.format(root=checkpoint_root)})
    assert response.status_code == 403, response.text
    assert "FORGETWATCH_CHECKPOINT_ROOTS" in response.json()["detail"] or "host" in response.json()["detail"]


@pytest.mark.parametrize("uri", ["relative/path", "az://bucket/ckpt", "s3://bucket/a/../b", "gs://bucket/a/../b",
                                 "{root}/missing"])
def test_unusable_uris_are_422(client: TestClient, run_id: int, checkpoint_root: Path, uri: str) -> None:
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 1, "uri": uri.format(root=checkpoint_root)})
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)


def test_negative_or_absurd_steps_are_422(client: TestClient, run_id: int, checkpoint_dir: Path) -> None:
    for step in (-1, 2**63, "x", 1.5):
        response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": step, "uri": str(checkpoint_dir)})
        assert response.status_code == 422, step


def test_checkpoint_for_unknown_run_is_404(client: TestClient, checkpoint_dir: Path) -> None:
    assert client.post("/v1/runs/424242/checkpoints", json={"step": 1, "uri": str(checkpoint_dir)}).status_code == 404
    assert client.get("/v1/runs/424242/checkpoints/1").status_code == 404


def test_unknown_step_is_404(client: TestClient, run_id: int) -> None:
    assert client.get(f"/v1/runs/{run_id}/checkpoints/5").status_code == 404


def test_retry_with_same_idempotency_key_creates_nothing(client: TestClient, run_id: int, checkpoint_dir: Path,
                                                         engine) -> None:
    from sqlalchemy import text

    headers = {"Idempotency-Key": "ckpt-10"}
    first = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 10, "uri": str(checkpoint_dir)}, headers=headers)
    second = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 10, "uri": str(checkpoint_dir)}, headers=headers)
    assert (second.status_code, second.json()) == (first.status_code, first.json()) == (202, first.json())
    with engine.connect() as conn:
        kinds = conn.execute(text("SELECT task_name FROM procrastinate_jobs ORDER BY id")).scalars().all()
    assert kinds == ["forgetwatch:prepare_spectral_base", "forgetwatch:plan_param_drift"]  # the run's, the step's


def test_reusing_a_key_for_another_request_conflicts(client: TestClient, run_id: int, checkpoint_dir: Path) -> None:
    headers = {"Idempotency-Key": "k"}
    client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 10, "uri": str(checkpoint_dir)}, headers=headers)
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 11, "uri": str(checkpoint_dir)},
                           headers=headers)
    assert response.status_code == 409


def test_upload_then_register_without_uri(client: TestClient, run_id: int, settings) -> None:
    url = f"/v1/runs/{run_id}/checkpoints/3/files/model.safetensors"
    response = client.put(url, content=b"abc" * 1000, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    assert response.json()["size_bytes"] == 3000
    registered = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 3})
    assert registered.status_code == 202
    stored = Path(registered.json()["uri"]) / "model.safetensors"
    assert stored.read_bytes() == b"abc" * 1000
    assert stored.is_relative_to(settings.data_dir)
    # files of a registered checkpoint are immutable
    assert client.put(url, content=b"zzz").status_code == 409


def test_register_without_uri_or_upload_is_422(client: TestClient, run_id: int) -> None:
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 3})
    assert response.status_code == 422
    assert "upload" in response.json()["detail"]


@pytest.mark.parametrize("name", ["%2E%2E", "a%2Fb.safetensors", "..%2F..%2Fescape", ".hidden", "a%5Cb", "a/b"])
def test_upload_filenames_with_separators_are_refused(client: TestClient, run_id: int, name: str, settings) -> None:
    response = client.put(f"/v1/runs/{run_id}/checkpoints/3/files/{name}", content=b"x")
    assert response.status_code == 422, response.text
    assert not any(p.name == "escape" for p in settings.data_dir.rglob("*"))


def test_upload_over_the_limit_is_413_and_leaves_nothing(client: TestClient, run_id: int, settings) -> None:
    client.app.state.settings = settings.model_copy(update={"max_upload_bytes": 1000})
    response = client.put(f"/v1/runs/{run_id}/checkpoints/3/files/big.bin", content=b"x" * 5000)
    assert response.status_code == 413
    folder = settings.uploads_dir / str(run_id) / "3"
    assert not folder.exists() or not any(folder.iterdir())


def _statements(engine) -> list[str]:
    from sqlalchemy import event

    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *_: seen.append(statement))
    return seen


def test_the_ingest_paths_stay_short(client: TestClient, run_id: int, checkpoint_dir: Path, engine) -> None:
    """Trainers call these the most: a sample batch takes no statement on the engine (one on the ingest
    pool, `service.db.ingest`), a keyed checkpoint registration nine (the key, the run, the step's lock,
    the row, its analyses, its job, the run's probe sets, the jobs it answers with, the key's answer)."""
    client.post(f"/v1/runs/{run_id}/samples", json={"step": 1, "items": [{"prompt": "p", "response": "r"}]})
    seen = _statements(engine)
    batch = {"step": 2, "items": [{"prompt": "p", "response": "r"}] * 5}
    assert client.post(f"/v1/runs/{run_id}/samples", json=batch, headers={"Idempotency-Key": "s"}).status_code == 202
    assert seen == []
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 10, "uri": str(checkpoint_dir)},
                           headers={"Idempotency-Key": "c"})
    assert response.status_code == 202 and response.json()["status"] == "pending"
    assert len(seen) == 9, seen
    with_probes = {"name": "ood", "domain": "ood", "items": [{"prompt": "1+1=", "reference": "2"}]}
    assert client.post("/v1/probe-sets", json=with_probes).status_code == 201
    assert client.post(f"/v1/runs/{run_id}/probe-sets", json={"probe_sets": ["ood"]}).status_code in (200, 201)
    seen.clear()
    response = client.post(f"/v1/runs/{run_id}/checkpoints", json={"step": 20, "uri": str(checkpoint_dir)})
    assert response.status_code == 202
    assert sorted(j["task"] for j in response.json()["jobs"]) == ["forgetwatch:plan_param_drift",
                                                                  "forgetwatch:probe_drift"]
    assert client.get(f"/v1/runs/{run_id}/checkpoints/20").json()["status"] == "pending"
