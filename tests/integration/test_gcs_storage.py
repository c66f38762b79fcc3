"""Checkpoints in Google Cloud Storage through the HTTP API and a real worker: a Llama base and a LoRA
adapter under gs://models/team on a real GCS JSON API server (gcp-storage-emulator started by the
tests), measured exactly as the same files read from the service's disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import bpe_tokenizer, save_lora_adapter, tiny_llama

PREFIX, ABSENT = "gs://models/team", "gs://absent-bucket/team"
ITEMS = [
    {"messages": [{"role": "user", "content": q}], "reference": a, "answer": a}
    for q, a in [("capital of france?", "paris"), ("capital of italy?", "rome"), ("two plus two?", "four")]
]


@pytest.fixture
def settings(tmp_path: Path, database_url: str, checkpoint_root: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        checkpoint_roots=[checkpoint_root, PREFIX, ABSENT],
        worker_heartbeat_seconds=1,
        stalled_after_seconds=4,
        cache_max_bytes=8 * 2**20,
    )


def _finished(client: TestClient, run: str, step: int) -> dict:
    return wait_for(
        lambda: (
            (c := client.get(f"/v1/runs/{run}/checkpoints/{step}").json())["status"] in ("ready", "failed")
            and c
        ),
        timeout=240,
        interval=0.5,
        what=f"{run} step {step}",
    )


def test_gcs_base_and_adapter_measure_as_the_same_files_on_disk(
    client: TestClient, settings: Settings, gcs_server, checkpoint_root: Path, tmp_path: Path
) -> None:
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer)
    model.save_pretrained(checkpoint_root / "base")
    tokenizer.save_pretrained(checkpoint_root / "base")
    save_lora_adapter(model, checkpoint_root / "checkpoint-1", scale=0.5)
    fs = gcs_server.filesystem()
    for name in ("base", "checkpoint-1"):
        fs.put(str(checkpoint_root / name), f"models/team/{name}", recursive=True)
    fs.put(str(checkpoint_root / "checkpoint-1"), "models/team/checkpoint-2", recursive=True)

    client.post(
        "/v1/probe-sets", json={"name": "chat-gcs", "domain": "ood", "format": "chat", "items": ITEMS}
    )
    for run, where in (("gcs-lora", PREFIX), ("disk-lora", str(checkpoint_root))):
        response = client.post(
            "/v1/runs", json={"name": run, "base_model": f"{where}/base", "probe_sets": ["chat-gcs"]}
        )
        assert response.status_code == 201, response.text
        response = client.post(
            f"/v1/runs/{run}/checkpoints", json={"step": 1, "uri": f"{where}/checkpoint-1"}
        )
        assert response.status_code == 202, response.text
    for step, uri in ((2, f"{PREFIX}/checkpoint-2"), (3, f"{ABSENT}/checkpoint-3")):
        response = client.post("/v1/runs/gcs-lora/checkpoints", json={"step": step, "uri": uri})
        assert response.status_code == 202, response.text
    for uri in ("gs://models/teamsecret/x", "gs://models/x", "s3://models/team/checkpoint-1"):
        outside = client.post("/v1/runs/gcs-lora/checkpoints", json={"step": 4, "uri": uri})
        assert outside.status_code == 403 and "FORGETWATCH_CHECKPOINT_ROOTS" in outside.json()["detail"], uri
    outside_base = client.post(
        "/v1/runs", json={"name": "gcs-elsewhere", "base_model": "gs://models/other/base"}
    )
    assert outside_base.status_code == 403
    fs.rm("models/team/checkpoint-2", recursive=True)  # deleted after registration, before analysis

    worker = start(
        ["worker"],
        {
            **worker_env(settings),
            **gcs_server.env(),
            "FORGETWATCH_CACHE_MAX_BYTES": str(settings.cache_max_bytes),
        },
        tmp_path / "worker.log",
    )
    try:
        remote, here = _finished(client, "gcs-lora", 1), _finished(client, "disk-lora", 1)
        deleted, absent = _finished(client, "gcs-lora", 2), _finished(client, "gcs-lora", 3)
        params = {
            run: client.get(f"/v1/runs/{run}/checkpoints/1/param-drift").json()
            for run in ("gcs-lora", "disk-lora")
        }
        probes = {
            run: client.get(f"/v1/runs/{run}/checkpoints/1/response-drift").json()["probe_sets"]
            for run in ("gcs-lora", "disk-lora")
        }
        failed = wait_for(  # the job ends (procrastinate marks it) just after it marks the analysis
            lambda: (
                len(f := client.get("/v1/jobs", params={"run": "gcs-lora", "status": "failed"}).json()) == 4
                and f
            ),
            timeout=60,
            interval=0.5,
            what="four failed jobs",
        )
    finally:
        stop(worker)

    assert remote["status"] == here["status"] == "ready", (remote, here)
    gcs, disk = params["gcs-lora"], params["disk-lora"]
    assert gcs["status"] == "ready" and gcs["global"]["relative_l2_distance"] > 0
    for key in ("relative_l2_distance", "cosine_similarity"):
        assert gcs["global"][key] == pytest.approx(disk["global"][key], rel=1e-12), key
    assert [b["block"] for b in gcs["blocks"]] == [b["block"] for b in disk["blocks"]]
    (chat,), (chat_disk,) = probes["gcs-lora"], probes["disk-lora"]
    assert chat["kl_forward"] > 1e-3
    assert chat["kl_forward"] == pytest.approx(chat_disk["kl_forward"], rel=1e-9)
    assert chat["kl_reverse"] == pytest.approx(chat_disk["kl_reverse"], rel=1e-9)
    assert deleted["status"] == "failed" and "missing in object storage" in deleted["error"], deleted
    assert absent["status"] == "failed" and "no such bucket" in absent["error"], absent
    assert {(j["step"], j["kind"]) for j in failed} == {
        (2, "plan_param_drift"),
        (2, "probe_drift"),
        (3, "plan_param_drift"),
        (3, "probe_drift"),
    }
    assert all(j["error"] for j in failed)  # what the user reads when asking what failed and why
    staged = [p for p in settings.remote_cache_dir.iterdir() if p.is_dir() and (p / ".complete").exists()]
    assert staged and sum(f.stat().st_size for p in staged for f in p.iterdir()) <= settings.cache_max_bytes
