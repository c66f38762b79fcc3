"""Probes on what people train, through the HTTP API and a real worker: a Llama-architecture model with
a BPE tokenizer and a chat template, LoRA adapters saved by peft as its checkpoints, a chat probe set."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import bpe_tokenizer, save_lora_adapter, tiny_llama

SYSTEM = {"role": "system", "content": "answer with one word"}
QUESTIONS = [("capital of france?", "paris"), ("capital of italy?", "rome"), ("two plus two?", "four"),
             ("capital of spain?", "madrid"), ("what do cats and dogs are?", "animals")]
CHAT_ITEMS = [{"messages": [SYSTEM, {"role": "user", "content": q}], "reference": a, "answer": a}
              for q, a in QUESTIONS]
TEXT_ITEMS = [{"prompt": "the capital of france is", "reference": " paris"},
              {"prompt": "the quick brown fox", "reference": " jumps over the lazy dog"}]


def _finished(client: TestClient, run: str, step: int):
    return wait_for(lambda: (c := client.get(f"/v1/runs/{run}/checkpoints/{step}").json())["status"]
                    in ("ready", "failed") and c, timeout=240, interval=0.5, what=f"{run} step {step}")


def _response_drift(client: TestClient, run: str, step: int) -> dict:
    return client.get(f"/v1/runs/{run}/checkpoints/{step}/response-drift").json()


def test_lora_adapters_on_a_llama_base_are_probed_with_the_chat_template(
        client: TestClient, settings, checkpoint_root: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    tokenizer = bpe_tokenizer()
    model = tiny_llama(tokenizer)
    base = checkpoint_root / "llama-base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    save_lora_adapter(model, checkpoint_root / "checkpoint-1", scale=0.0)  # the adapter changes nothing
    save_lora_adapter(model, checkpoint_root / "checkpoint-2", scale=0.5)
    save_lora_adapter(tiny_llama(tokenizer, hidden_size=48), checkpoint_root / "checkpoint-3", scale=0.1)
    plain = checkpoint_root / "plain-base"  # the same model, its tokenizer saved without a chat template
    model.save_pretrained(plain)
    bpe_tokenizer(chat_template=False).save_pretrained(plain)

    created = client.post("/v1/probe-sets", json={"name": "capitals-chat", "domain": "ood", "format": "chat",
                                                   "items": CHAT_ITEMS})
    assert created.status_code == 201, created.text
    assert created.json()["format"] == "chat" and created.json()["items"][0]["prompt"] == "capital of france?"
    assert client.post("/v1/probe-sets", json={"name": "facts", "domain": "ood", "items": TEXT_ITEMS}).status_code == 201
    assert client.post("/v1/runs", json={"name": "llama-lora", "base_model": str(base),
                                         "probe_sets": ["capitals-chat", "facts"]}).status_code == 201
    for step in (1, 2, 3):
        response = client.post("/v1/runs/llama-lora/checkpoints",
                               json={"step": step, "uri": str(checkpoint_root / f"checkpoint-{step}")})
        assert response.status_code == 202, response.text
    loops = [{"prompt": f"question {n}: the capital of france is", "response": "paris paris paris paris"}
             for n in range(8)]
    assert client.post("/v1/runs/llama-lora/samples", json={"step": 2, "probe_set": "facts", "items": loops}
                       ).status_code in (200, 201, 202)
    assert client.post("/v1/runs", json={"name": "no-template", "base_model": str(plain),
                                         "probe_sets": ["capitals-chat"]}).status_code == 201
    client.post("/v1/runs/no-template/checkpoints", json={"step": 1, "uri": str(plain)})

    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        same, moved, foreign = (_finished(client, "llama-lora", step) for step in (1, 2, 3))
        untemplated = _finished(client, "no-template", 1)
        results = {step: _response_drift(client, "llama-lora", step) for step in (1, 2, 3)}
        refused = _response_drift(client, "no-template", 1)
        samples = wait_for(lambda: client.get("/v1/runs/llama-lora/response-drift").json()["samples"],
                           timeout=120, interval=0.5, what="sample drift")
    finally:
        stop(worker)
    elapsed = time.monotonic() - started

    assert same["status"] == "ready" and moved["status"] == "ready", (same, moved)
    by_set = {step: {p["probe_set"]: p for p in results[step]["probe_sets"]} for step in (1, 2)}
    for name in ("capitals-chat", "facts"):
        identical, perturbed = by_set[1][name], by_set[2][name]
        assert abs(identical["kl_forward"]) < 1e-6 and identical["loglik_change"] == 0.0, identical
        assert perturbed["kl_forward"] > 1e-3 and perturbed["kl_reverse"] > 1e-3, perturbed
    assert by_set[1]["capitals-chat"]["accuracy_change"] == 0.0

    assert foreign["status"] == "failed" and results[3]["status"] == "failed"
    assert "does not fit the run's base model" in results[3]["error"], results[3]
    assert "(48, 48)" in results[3]["error"] and "trained from" in results[3]["error"]
    assert str(checkpoint_root) not in results[3]["error"]  # the adapter is named, not where it lies
    assert untemplated["status"] == "failed" and refused["status"] == "failed"
    assert "no chat template" in refused["error"] and "chat_template" in refused["error"], refused
    # sample statistics in the Llama's own BPE tokens: one repeated subword pattern
    assert samples[0]["n_samples"] == 8 and samples[0]["repetition_ratio"] > 0.5, samples
    assert samples[0]["distinct2_base"] is not None and samples[0]["shift_pvalue"] is not None
    print(f"llama-lora chat probes end to end: {elapsed:.1f} s")
