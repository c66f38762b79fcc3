"""The allow-list holds for every file a worker opens, not only for the registered path.

Where an attack only needs a path to be followed, it is first shown to work without confinement
(`roots=None`: the file outside *is* read), then to fail with it; then each is driven through the
API and the real worker as an attacker would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from drift.checkpoint_io import CheckpointError
from drift.checkpoints import list_tensors, open_checkpoint
from drift.confined import check_model_folder, open_confined
from tests.security import corpus


def _roots(root: Path) -> list[Path]:
    return [Path(os.path.realpath(root))]


@pytest.mark.parametrize("shard", ["../../outside/stolen.safetensors", "ABSOLUTE"])
def test_index_naming_a_shard_outside_the_folder_is_refused(checkpoint_root: Path, outside: Path,
                                                            shard: str) -> None:
    stolen = corpus.valid(outside / "stolen.safetensors")
    folder = checkpoint_root / "step-1"
    folder.mkdir()
    name = str(stolen) if shard == "ABSOLUTE" else shard
    corpus.index(folder, {"w": name, "b": name})
    for roots in (None, _roots(checkpoint_root)):  # refused even where nothing else is confined
        with pytest.raises(CheckpointError, match="not inside the checkpoint folder") as error:
            list_tensors(folder, roots=roots)
        assert str(outside) not in str(error.value)


def test_symlink_inside_an_allowed_folder_is_not_followed_out(checkpoint_root: Path, outside: Path) -> None:
    corpus.valid(outside / "stolen.safetensors")
    folder = checkpoint_root / "step-1"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(outside / "stolen.safetensors")
    assert len(list_tensors(folder)) == 2  # unconfined, the link is followed
    with pytest.raises(CheckpointError, match="outside the allowed checkpoint roots") as error:
        list_tensors(folder, roots=_roots(checkpoint_root))
    assert str(outside) not in str(error.value)


def test_symlink_to_a_shard_inside_the_roots_still_works(checkpoint_root: Path) -> None:
    """The Hugging Face cache layout (snapshots/ link to blobs/) stays readable."""
    blob = corpus.valid(checkpoint_root / "blob-1234")
    folder = checkpoint_root / "snapshot"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(blob)
    with open_checkpoint(folder, roots=_roots(checkpoint_root)) as ckpt:
        assert ckpt.array("w").shape == (8, 4)


def test_a_folder_swapped_for_a_symlink_after_the_check_is_caught_at_open(checkpoint_root: Path,
                                                                          outside: Path) -> None:
    corpus.valid(outside / "model.safetensors")
    folder = checkpoint_root / "step-1"
    folder.symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match="outside the allowed checkpoint roots"):
        open_confined(folder / "model.safetensors", _roots(checkpoint_root))


def test_devices_and_fifos_are_not_opened(checkpoint_root: Path) -> None:
    fifo = checkpoint_root / "model.safetensors"
    os.mkfifo(fifo)  # opening it for reading would block forever without O_NONBLOCK
    with pytest.raises(CheckpointError, match="not a regular file"):
        open_checkpoint(fifo, roots=_roots(checkpoint_root))


def test_transformers_folders_are_checked_before_loading(checkpoint_root: Path, outside: Path) -> None:
    folder = checkpoint_root / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").symlink_to(corpus.secret_text(outside / "secret.txt"))
    with pytest.raises(CheckpointError, match="tokenizer.json: lies outside"):
        check_model_folder(folder, _roots(checkpoint_root))
    (folder / "tokenizer.json").unlink()
    corpus.index(folder, {"w": "../../outside/secret.txt"})
    with pytest.raises(CheckpointError, match="not inside the checkpoint folder"):
        check_model_folder(folder, _roots(checkpoint_root))


def test_text_file_bytes_never_reach_the_error(checkpoint_root: Path) -> None:
    """Once, a text file's first 8 bytes came back as the 'header length' in the error."""
    bogus = corpus.secret_text(checkpoint_root / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        list_tensors(bogus, roots=_roots(checkpoint_root))
    assert corpus.leaked(str(error.value)) == []


# --- through the API and the worker ---------------------------------------------------------------

def _run(client: TestClient, base: Path) -> None:
    assert client.post("/v1/runs", json={"name": "victim", "base_model": str(base)}).status_code == 201


def _analysis_outcome(client: TestClient, step: int) -> dict:
    checkpoint = client.get(f"/v1/runs/victim/checkpoints/{step}").json()
    drift = client.get(f"/v1/runs/victim/checkpoints/{step}/param-drift").json()
    return {"status": checkpoint["status"], "error": checkpoint["error"] or "", "drift": drift.get("status")}


def test_uploaded_index_pointing_outside_fails_the_analysis_and_reads_nothing(
        client: TestClient, checkpoint_root: Path, outside: Path, drain_queue) -> None:
    """The reported attack: upload an index whose shard is a file outside the roots, register, wait."""
    base = corpus.valid(checkpoint_root / "base.safetensors")
    corpus.valid(outside / "stolen.safetensors", seed=1)
    corpus.secret_text(outside / "secret.txt")
    _run(client, base)
    for shard in ("stolen.safetensors", "secret.txt"):
        step = 1 if shard.startswith("stolen") else 2
        weight_map = {"w": f"../../../../../../../../..{outside}/{shard}", "b": f"{outside}/{shard}"}
        body = f'{{"weight_map": {weight_map!r}}}'.replace("'", '"')
        put = client.put(f"/v1/runs/victim/checkpoints/{step}/files/model.safetensors.index.json", content=body)
        assert put.status_code == 201
        assert client.post("/v1/runs/victim/checkpoints", json={"step": step}).status_code == 202
    drain_queue()
    for step in (1, 2):
        outcome = _analysis_outcome(client, step)
        assert outcome["status"] == "failed", outcome
        assert "not inside the checkpoint folder" in outcome["error"]
        assert str(outside) not in outcome["error"]
        assert corpus.leaked(outcome["error"]) == []
        assert outcome["drift"] == "failed"  # no drift of the stolen file was computed


def test_symlinked_file_in_a_registered_folder_fails_the_analysis(client: TestClient, checkpoint_root: Path,
                                                                  outside: Path, drain_queue) -> None:
    base = corpus.valid(checkpoint_root / "base.safetensors")
    _run(client, base)
    folder = checkpoint_root / "step-1"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(corpus.secret_text(outside / "secret.txt"))
    assert client.post("/v1/runs/victim/checkpoints", json={"step": 1, "uri": str(folder)}).status_code == 202
    drain_queue()
    outcome = _analysis_outcome(client, 1)
    assert outcome["status"] == "failed"
    assert "outside the allowed checkpoint roots" in outcome["error"]
    assert str(outside) not in outcome["error"] and corpus.leaked(outcome["error"]) == []


def test_worker_rechecks_a_folder_replaced_by_a_symlink_after_registration(
        client: TestClient, checkpoint_root: Path, outside: Path, drain_queue) -> None:
    base = corpus.valid(checkpoint_root / "base.safetensors")
    _run(client, base)
    folder = checkpoint_root / "step-1"
    folder.mkdir()
    corpus.valid(folder / "model.safetensors")
    assert client.post("/v1/runs/victim/checkpoints", json={"step": 1, "uri": str(folder)}).status_code == 202
    (folder / "model.safetensors").unlink()
    folder.rmdir()
    corpus.valid(outside / "model.safetensors", seed=2)
    folder.symlink_to(outside, target_is_directory=True)
    drain_queue()
    outcome = _analysis_outcome(client, 1)
    assert outcome["status"] == "failed"
    assert "outside the allowed checkpoint roots" in outcome["error"]
    assert str(outside) not in outcome["error"]


@pytest.mark.parametrize("uri", ["/proc/self/cwd", "/proc/self/root/etc", "file:///proc/self/cwd/x"])
def test_forbidden_uri_message_does_not_say_where_it_resolved(client: TestClient, checkpoint_root: Path,
                                                              uri: str) -> None:
    _run(client, corpus.valid(checkpoint_root / "base.safetensors"))
    response = client.post("/v1/runs/victim/checkpoints", json={"step": 1, "uri": uri})
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert "outside the allowed checkpoint roots" in detail
    assert os.getcwd() not in detail.replace(uri, "")


def test_large_tokenizer_files_inside_the_roots_pass_the_folder_check(checkpoint_root: Path) -> None:
    """Only config.json and indexes are parsed by the check; tokenizer.json reaches 30 MB in the wild."""
    folder = checkpoint_root / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with open(folder / "tokenizer.json", "wb") as out:
        out.truncate(17 * 2**20)
    check_model_folder(folder, _roots(checkpoint_root))
