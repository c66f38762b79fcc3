"""A corpus of hostile safetensors files (tests/security/corpus.py): each one is refused with a
clear CheckpointError, never an OverflowError, RecursionError, TypeError or a hang; through the
worker, each leaves a failed analysis with its reason and nothing `processing`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from drift.checkpoint_io import CheckpointError
from drift.checkpoints import open_checkpoint
from tests.security import corpus


@pytest.mark.parametrize("case", sorted(corpus.HOSTILE))
def test_hostile_file_is_a_clear_checkpoint_error(tmp_path: Path, case: str) -> None:
    path = corpus.HOSTILE[case](tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(path, roots=[Path(os.path.realpath(tmp_path))])
    message = str(error.value)
    assert message.startswith(str(path)) and "; " in message  # names the file and what to do
    assert corpus.leaked(message) == []
    assert len(message) < 600


def test_the_huge_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = corpus.HOSTILE["huge_header"](tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="header over"):
        open_checkpoint(path)


def test_identical_ranges_are_tied_tensors_not_an_overlap(tmp_path: Path) -> None:
    path = corpus.raw(tmp_path / "m.safetensors", {
        "wte.weight": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "lm_head.weight": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "empty": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]}}, b"\1\2\3\4")
    with open_checkpoint(path) as ckpt:
        assert ckpt.infos["lm_head.weight"].alias_of == "wte.weight"


def test_every_hostile_checkpoint_ends_failed_with_a_reason(client: TestClient, checkpoint_root: Path,
                                                           drain_queue) -> None:
    base = corpus.valid(checkpoint_root / "base.safetensors")
    assert client.post("/v1/runs", json={"name": "hostile", "base_model": str(base)}).status_code == 201
    cases = sorted(corpus.HOSTILE)
    for step, case in enumerate(cases, start=1):
        folder = checkpoint_root / case
        folder.mkdir()
        corpus.HOSTILE[case](folder / "model.safetensors")
        response = client.post("/v1/runs/hostile/checkpoints", json={"step": step, "uri": str(folder)})
        assert response.status_code == 202, (case, response.text)
    drain_queue()
    checkpoints = client.get("/v1/runs/hostile/checkpoints").json()
    assert [c["status"] for c in checkpoints] == ["failed"] * len(cases)
    for case, checkpoint in zip(cases, checkpoints, strict=True):
        assert checkpoint["error"].startswith("params: "), (case, checkpoint["error"])
        assert corpus.leaked(checkpoint["error"]) == [], case
        assert all(job["status"] != "doing" for job in checkpoint["jobs"])
