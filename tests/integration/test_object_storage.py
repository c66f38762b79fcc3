"""Checkpoints in object storage through the HTTP API and a real worker: a Llama base and a LoRA
adapter under s3://models/team on a real S3-compatible server (SeaweedFS started by the tests)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import bpe_tokenizer, save_lora_adapter, tiny_llama

PREFIX = "s3://models/team"
ITEMS = [{"messages": [{"role": "user", "content": q}], "reference": a, "answer": a}
         for q, a in [("capital of france?", "paris"), ("capital of italy?", "rome"), ("two plus two?", "four")]]


@pytest.fixture
def settings(tmp_path: Path, database_url: str, checkpoint_root: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "data",
                    checkpoint_roots=[checkpoint_root, PREFIX], worker_heartbeat_seconds=1, stalled_after_seconds=4,
                    cache_max_bytes=8 * 2**20)


def _finished(client: TestClient, step: int) -> dict:
    return wait_for(lambda: (c := client.get(f"/v1/runs/s3-lora/checkpoints/{step}").json())["status"]
                    in ("ready", "failed") and c, timeout=240, interval=0.5, what=f"step {step}")


def test_s3_base_and_adapter_are_analysed_with_range_reads_and_a_bounded_cache(
        client: TestClient, settings: Settings, s3_server, tmp_path: Path) -> None:
    started = time.monotonic()
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    save_lora_adapter(model, tmp_path / "checkpoint-1", scale=0.5)
    fs = s3_server.filesystem()
    for name in ("base", "checkpoint-1"):
        fs.put(str(tmp_path / name), f"models/team/{name}", recursive=True)
    fs.put(str(tmp_path / "checkpoint-1"), "models/team/checkpoint-2", recursive=True)

    client.post("/v1/probe-sets", json={"name": "chat-s3", "domain": "ood", "format": "chat", "items": ITEMS})
    assert client.post("/v1/runs", json={"name": "s3-lora", "base_model": f"{PREFIX}/base",
                                         "probe_sets": ["chat-s3"]}).status_code == 201
    for step in (1, 2):
        response = client.post("/v1/runs/s3-lora/checkpoints",
                               json={"step": step, "uri": f"{PREFIX}/checkpoint-{step}"})
        assert response.status_code == 202, response.text
    outside = client.post("/v1/runs/s3-lora/checkpoints", json={"step": 3, "uri": "s3://models/teamsecret/x"})
    assert outside.status_code == 403 and "FORGETWATCH_CHECKPOINT_ROOTS" in outside.json()["detail"]
    sneaky = client.post("/v1/runs/s3-lora/checkpoints", json={"step": 3, "uri": f"{PREFIX}/../secret/x"})
    assert sneaky.status_code == 422
    answers = [{"prompt": f"question {n}: capital of france?", "response": "paris paris paris"} for n in range(8)]
    client.post("/v1/runs/s3-lora/samples", json={"step": 1, "probe_set": "chat-s3", "items": answers})
    fs.rm("models/team/checkpoint-2", recursive=True)  # deleted after registration, before analysis

    worker = start(["worker"], {**worker_env(settings), **s3_server.env(),
                                "FORGETWATCH_CACHE_MAX_BYTES": str(settings.cache_max_bytes)},
                   tmp_path / "worker.log")
    try:
        adapter, deleted = _finished(client, 1), _finished(client, 2)
        params = client.get("/v1/runs/s3-lora/checkpoints/1/param-drift").json()
        probes = client.get("/v1/runs/s3-lora/checkpoints/1/response-drift").json()
        samples = wait_for(lambda: client.get("/v1/runs/s3-lora/response-drift").json()["samples"],
                           timeout=120, interval=0.5, what="sample drift")
    finally:
        stop(worker)
    elapsed = time.monotonic() - started

    assert adapter["status"] == "ready", adapter
    assert params["status"] == "ready" and params["global"]["relative_l2_distance"] > 0
    (chat,) = probes["probe_sets"]
    assert chat["probe_set"] == "chat-s3" and chat["kl_forward"] > 1e-3
    assert samples[0]["shift_pvalue"] is not None  # measured against the S3 base's own answers
    assert deleted["status"] == "failed" and "missing in object storage" in deleted["error"], deleted
    cache = settings.remote_cache_dir
    staged = [p for p in cache.iterdir() if p.is_dir() and (p / ".complete").exists()]
    assert staged and sum(f.stat().st_size for p in staged for f in p.iterdir()) <= settings.cache_max_bytes
    print(f"s3 base + adapter end to end: {elapsed:.1f} s")
