"""`hf://org/name@revision` through the local Hugging Face cache (built by the test in the hub's own
layout: blobs, snapshot symlinks, refs), through the API and a real worker."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import save_tiny_gpt2_run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo: str, folder: Path, *, commit: str = COMMIT, branch: str = "main") -> None:
    """Put `folder`'s files into a hub cache as `repo` at `commit`, with `branch` pointing at it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        os.replace(file, root / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    (root / "refs" / branch).write_text(commit)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, checkpoint_root: Path) -> Settings:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    return Settings(database_url=database_url, data_dir=tmp_path / "data", checkpoint_roots=[checkpoint_root, cache],
                    hf_cache_dir=cache, worker_heartbeat_seconds=1, stalled_after_seconds=4)


def test_hf_uris_resolve_in_the_local_cache_and_are_analysed(client: TestClient, settings: Settings,
                                                             checkpoint_root: Path, tmp_path: Path) -> None:
    base, step = save_tiny_gpt2_run(tmp_path / "saved", steps=1)
    cache_repo(settings.hf_cache_dir, "org/tiny-base", base)
    cache_repo(settings.hf_cache_dir, "org/tiny-sft", step, branch="v1")
    assert client.post("/v1/runs", json={"name": "hub", "base_model": "hf://org/tiny-base"}).status_code == 201
    response = client.post("/v1/runs/hub/checkpoints", json={"step": 1, "uri": "hf://org/tiny-sft@v1"})
    assert response.status_code == 202, response.text
    assert response.json()["uri"].endswith(f"models--org--tiny-sft/snapshots/{COMMIT}")
    missing = client.post("/v1/runs/hub/checkpoints", json={"step": 2, "uri": "hf://org/absent@main"})
    assert missing.status_code == 422 and "huggingface-cli download org/absent" in missing.json()["detail"]
    for bad in ("hf://org/tiny-sft@../../etc", "hf://../x", "hf://org/a/b/c"):
        assert client.post("/v1/runs/hub/checkpoints", json={"step": 2, "uri": bad}).status_code == 422, bad

    env = {**worker_env(settings), "FORGETWATCH_HF_CACHE_DIR": str(settings.hf_cache_dir)}
    worker = start(["worker"], env, tmp_path / "worker.log")
    try:
        done = wait_for(lambda: (c := client.get("/v1/runs/hub/checkpoints/1").json())["status"]
                        in ("ready", "failed") and c, timeout=120, interval=0.5, what="hf checkpoint")
    finally:
        stop(worker)
    assert done["status"] == "ready", done
    drift = client.get("/v1/runs/hub/checkpoints/1/param-drift").json()
    assert drift["global"]["relative_l2_distance"] > 0  # base (hf://org/tiny-base) -> one optimizer step


def test_an_hf_cache_outside_the_roots_is_refused(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "not-allowed"
    base, _ = save_tiny_gpt2_run(tmp_path / "saved", steps=1)
    cache_repo(settings.hf_cache_dir, "org/tiny", base)
    cache_repo(elsewhere, "org/tiny", base)
    assert client.post("/v1/runs", json={"name": "hub2", "base_model": "hf://org/tiny"}).status_code == 201
    settings.hf_cache_dir = elsewhere
    refused = client.post("/v1/runs", json={"name": "hub3", "base_model": "hf://org/tiny"})
    assert refused.status_code == 403 and "FORGETWATCH_CHECKPOINT_ROOTS" in refused.json()["detail"]
    response = client.post("/v1/runs/hub2/checkpoints", json={"step": 1, "uri": "hf://org/tiny"})
    assert response.status_code == 403 and "FORGETWATCH_CHECKPOINT_ROOTS" in response.json()["detail"]
    assert str(tmp_path) not in response.text  # nothing resolved is echoed
