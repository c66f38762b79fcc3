"""Response drift through the queue: probe KL and forgetting per checkpoint, sample-batch shift."""

import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import make_base_model, worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import char_tokenizer, tiny_gpt2

ITEMS = [{"prompt": f"{a}+{b}=", "reference": str(a + b), "answer": str(a + b)} for a in range(4) for b in range(4)]


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_probe_and_sample_drift_reach_the_api(client: TestClient, settings, checkpoint_root: Path,
                                              tmp_path: Path) -> None:
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer, n_positions=32)  # shorter than prompt + 64 new tokens: generation is capped
    base = _save(model, tokenizer, checkpoint_root / "base")
    same = _save(model, tokenizer, checkpoint_root / "step-1")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(checkpoint_root / "step-2")  # no tokenizer: the base's is used

    client.post("/v1/probe-sets", json={"name": "arith", "domain": "ood", "items": ITEMS})
    client.post("/v1/runs", json={"name": "probe-run", "base_model": str(base), "probe_sets": ["arith"]})
    client.post("/v1/runs/probe-run/checkpoints", json={"step": 1, "uri": str(same)})
    client.post("/v1/runs/probe-run/checkpoints", json={"step": 2, "uri": str(checkpoint_root / "step-2")})
    loops = [{"prompt": i["prompt"], "response": "= = = = = = = ="} for i in ITEMS]
    client.post("/v1/runs/probe-run/samples", json={"step": 2, "probe_set": "arith", "items": loops})

    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        for step in (1, 2):
            done = wait_for(lambda s=step: (c := client.get(f"/v1/runs/probe-run/checkpoints/{s}").json())["status"]
                            in ("ready", "failed") and c, timeout=180, interval=1, what=f"step {step}")
            assert done["status"] == "ready", done
        drift = wait_for(lambda: (d := client.get("/v1/runs/probe-run/response-drift").json())["samples"] and d,
                         timeout=120, interval=1, what="sample drift")
    finally:
        stop(worker)

    series = drift["probe_sets"]["arith"]["series"]
    assert drift["probe_sets"]["arith"]["domain"] == "ood"
    identical, perturbed = series
    assert abs(identical["kl_forward"]) < 1e-6 and identical["agreement"] == 1.0
    assert identical["accuracy_change"] == 0.0 and identical["loglik_change"] == 0.0
    assert perturbed["kl_forward"] > 0.01 and perturbed["kl_reverse"] > 0.01
    assert perturbed["kl_forward_p10"] <= perturbed["kl_forward_p50"] <= perturbed["kl_forward_p90"]
    sample = drift["samples"][0]
    assert sample["n_samples"] == len(ITEMS) and sample["probe_set"] == "arith"
    assert sample["repetition_ratio"] > 0.5  # every response is one repeated pattern
    assert sample["shift_pvalue"] is not None and sample["distinct2_base"] is not None
    per_step = client.get("/v1/runs/probe-run/checkpoints/2/response-drift").json()
    assert per_step["status"] == "ready" and per_step["probe_sets"][0]["kl_forward"] == perturbed["kl_forward"]
    status = client.get("/v1/runs/probe-run/status").json()
    # Noise of 0.5 on every weight: the reference log-likelihood (the untrained base answers nothing right,
    # so accuracy cannot anchor a relative drop) is measurably worse, and that is detected, not predicted.
    detection = status["detection"]
    assert detection["step"] == 2 and detection["detected"] and detection["metric"] == "loglik"
    assert detection["drop_low"] >= 0.1 and status["first_detected_step"] == 2
    assert status["forecast"]["reason_code"] == "detected" and status["forecast"]["probability"] is None


def test_the_service_measures_the_base_when_a_run_names_it_before_any_checkpoint(
        client: TestClient, settings, checkpoint_root: Path, tmp_path: Path) -> None:
    tokenizer = char_tokenizer()
    base = _save(tiny_gpt2(tokenizer, n_positions=32), tokenizer, checkpoint_root / "base")
    client.post("/v1/probe-sets", json={"name": "arith", "domain": "ood", "items": ITEMS})
    client.post("/v1/runs", json={"name": "named", "base_model": str(base), "probe_sets": ["arith"]})
    gone = make_base_model(checkpoint_root / "gone")
    client.post("/v1/runs", json={"name": "lost", "base_model": str(gone), "probe_sets": ["arith"]})
    shutil.rmtree(gone)  # deleted after the run was registered: its base row fails with the reason
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        named, lost = (wait_for(lambda r=run: (s := client.get(f"/v1/runs/{r}/status").json())["base"] and s,
                                timeout=120, interval=0.5, what=f"base row of {run}") for run in ("named", "lost"))
    finally:
        stop(worker)
    assert named["last_step"] is None  # no checkpoint was posted: the service measured the base itself
    (row,) = named["base"]
    assert row["status"] == "ready" and row["probe_set"] == "arith" and row["n_items"] == len(ITEMS)
    assert row["accuracy"] == 0.0  # an untrained model answers no sum
    assert row["loglik"] < 0 and row["entropy"] > 0
    (failed,) = lost["base"]
    assert failed["status"] == "failed" and failed["error"].startswith("the base cannot be loaded")
    assert failed["accuracy"] is None


def test_sample_batches_accumulate_a_sequential_shift_evalue(client: TestClient, settings, checkpoint_root: Path,
                                                             tmp_path: Path) -> None:
    tokenizer = char_tokenizer()
    base = _save(tiny_gpt2(tokenizer, n_positions=32), tokenizer, checkpoint_root / "base")
    client.post("/v1/runs", json={"name": "shift-run", "base_model": str(base)})
    client.post("/v1/runs/shift-run/checkpoints", json={"step": 1, "uri": str(base)})  # makes the run active
    loops = [{"prompt": i["prompt"], "response": "= = = = = = = ="} for i in ITEMS]
    for step in (1, 2, 3):
        assert client.post("/v1/runs/shift-run/samples", json={"step": step, "items": loops}).status_code == 202

    def evalues() -> list[dict] | None:
        samples = client.get("/v1/runs/shift-run/response-drift").json()["samples"]
        return samples if len(samples) == 3 and all(s["shift_evalue"] is not None for s in samples) else None

    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        samples = wait_for(evalues, timeout=180, interval=1, what="three e-values")
    finally:
        stop(worker)
    assert [s["step"] for s in samples] == [1, 2, 3]
    values = [s["shift_evalue"] for s in samples]
    # every pushed response is one loop, never what the base answers: the evidence grows batch by batch
    assert values[0] < values[1] < values[2] and values[2] >= 20
    assert [s["shift_evalue_max"] for s in samples] == values
    per_step = client.get("/v1/runs/shift-run/checkpoints/1/response-drift").json()
    assert per_step["samples"][0]["shift_evalue"] == values[0]
    metrics = client.get("/metrics").text
    gauge = [line.rsplit(" ", 1)[1] for line in metrics.splitlines()
             if line.startswith('forgetwatch_response_shift_evalue{method="unspecified",run="shift-run"}')]
    assert gauge and float(gauge[0]) == pytest.approx(values[2])
    drift = client.get("/v1/runs/shift-run/response-drift").json()
    edges = drift["similarity_bins"]
    for sample in drift["samples"]:  # the same prompts and responses at every step: the same distribution
        assert sum(sample["similarity_histogram"]) == len(ITEMS) == sample["n_samples"]
        assert sample["similarity_p10"] <= sample["similarity_p25"] <= sample["similarity_median"]
        assert sample["similarity_histogram"] == samples[0]["similarity_histogram"]
        assert sample["similarity_low_ratio"] == sum(
            c for c, high in zip(sample["similarity_histogram"], edges[1:], strict=True) if high <= 0.9) / len(ITEMS)
    page = client.get("/runs/shift-run").text
    assert "sequential shift e-value" in page and "No per-prompt similarity yet" not in page
