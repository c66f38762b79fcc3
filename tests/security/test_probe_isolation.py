"""Probe jobs open model files only in the isolated child: a safetensors file cut after its header
fails the analysis with a reason, and a base model cut while a child holds it mapped (transformers
keeps the weights memory-mapped) kills that child with SIGBUS, not the worker, which then goes on
with the next job. The worker here is the test process itself (the real procrastinate worker)."""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from tests.integration.models import char_tokenizer, tiny_gpt2

ARITH = [{"prompt": f"{a}+{b}=", "reference": str(a + b), "answer": str(a + b)} for a in range(3) for b in range(3)]
LETTERS = [{"prompt": f"{c} after", "reference": chr(ord(c) + 1)} for c in "abcdef"]


def _cut_after_header(folder: Path) -> None:
    """Shrink the weights file in place to its header alone (a re-save interrupted, or in progress)."""
    weights = folder / "model.safetensors"
    with open(weights, "rb") as file:
        (header_length,) = struct.unpack("<Q", file.read(8))
    os.truncate(weights, 8 + header_length)


def _models(root: Path) -> dict[str, Path]:
    """A tiny GPT-2 base saved twice (two runs' bases), two perturbed checkpoints, one cut checkpoint."""
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer, n_positions=32)
    folders = {name: root / name for name in ("base", "spare-base", "step-1", "step-2", "cut")}
    for name in ("base", "spare-base"):
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    for name in ("step-1", "step-2", "cut"):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
        model.save_pretrained(folders[name])  # no tokenizer: the base's is used
    _cut_after_header(folders["cut"])
    return folders


def _probe_sets(client: TestClient) -> None:
    for name, items in (("arith", ARITH), ("letters", LETTERS)):
        assert client.post("/v1/probe-sets", json={"name": name, "domain": "ood", "items": items}).status_code == 201


def _register(client: TestClient, run: str, base: Path, probe_sets: list[str], steps: dict[int, Path]) -> None:
    assert client.post("/v1/runs", json={"name": run, "base_model": str(base), "probe_sets": probe_sets}
                       ).status_code == 201
    for step, folder in steps.items():
        assert client.post(f"/v1/runs/{run}/checkpoints", json={"step": step, "uri": str(folder)}).status_code == 202


def _responses(client: TestClient, run: str, step: int) -> dict:
    return client.get(f"/v1/runs/{run}/checkpoints/{step}/response-drift").json()


def _base_rows(client: TestClient, run: str) -> dict[str, dict]:
    return {row["probe_set"]: row for row in client.get(f"/v1/runs/{run}/status").json()["base"]}


def test_a_cut_checkpoint_or_base_fails_its_probe_job_and_the_worker_goes_on(
        client: TestClient, checkpoint_root: Path, drain_queue: Callable[[], None]) -> None:
    models = _models(checkpoint_root)
    _probe_sets(client)
    _register(client, "r", models["base"], ["arith"], {1: models["step-1"], 2: models["cut"]})
    drain_queue()  # the base is measured and stays loaded in the child, its weights mapped
    assert _responses(client, "r", 1)["status"] == "ready"
    cut = _responses(client, "r", 2)
    assert cut["status"] == "failed" and "truncated" in cut["error"], cut
    checkpoint = client.get("/v1/runs/r/checkpoints/2").json()
    assert checkpoint["status"] == "failed" and "truncated" in checkpoint["error"], checkpoint

    _cut_after_header(models["base"])  # re-saved in place under the loaded base
    assert client.post("/v1/runs/r/probe-sets", json={"probe_sets": ["letters"]}).status_code == 200
    assert client.post("/v1/runs/r/checkpoints", json={"step": 3, "uri": str(models["step-2"])}).status_code == 202
    drain_queue()  # the new probe set needs the base's forward pass: the mapped pages are gone
    died = _responses(client, "r", 3)
    assert died["status"] == "failed", died
    assert "changed or vanished while they were read (SIGBUS" in died["error"], died
    assert str(checkpoint_root) not in died["error"]
    assert client.get("/v1/runs/r/checkpoints/3").json()["status"] == "failed"

    _register(client, "healthy", models["spare-base"], ["arith", "letters"], {1: models["step-2"]})
    drain_queue()  # the same worker, a fresh child
    healthy = _responses(client, "healthy", 1)
    assert healthy["status"] == "ready", healthy
    assert {p["probe_set"] for p in healthy["probe_sets"]} == {"arith", "letters"}
    assert client.get("/v1/runs/healthy/checkpoints/1").json()["status"] == "ready"


def test_a_base_cut_under_the_loaded_model_is_recorded_unmeasured_and_the_worker_goes_on(
        client: TestClient, checkpoint_root: Path, drain_queue: Callable[[], None]) -> None:
    models = _models(checkpoint_root)
    _probe_sets(client)
    _register(client, "first", models["base"], ["arith"], {})
    drain_queue()
    assert _base_rows(client, "first")["arith"]["status"] == "ready"

    _cut_after_header(models["base"])
    _register(client, "second", models["base"], ["letters"], {})
    drain_queue()  # measure_base builds the letters cache with the loaded base: SIGBUS in the child
    (died,) = _base_rows(client, "second").values()
    assert died["status"] == "failed" and died["accuracy"] is None, died
    assert died["error"].startswith("the base cannot be loaded: the checkpoint's files changed or vanished"), died
    assert "(SIGBUS" in died["error"]

    _register(client, "third", models["base"], ["arith", "letters"], {})  # the cut base, read afresh
    shutil.copytree(models["spare-base"], checkpoint_root / "fourth-base")
    _register(client, "fourth", checkpoint_root / "fourth-base", ["arith", "letters"], {})
    drain_queue()
    third = _base_rows(client, "third")  # letters needs the base's forward pass; it is cut
    assert all(row["status"] == "failed" and "truncated" in row["error"] for row in third.values()), third
    fourth = _base_rows(client, "fourth")
    assert [row["status"] for row in fourth.values()] == ["ready", "ready"], fourth
