import os
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import make_base_model


def test_create_run_returns_201_then_200_for_identical(client: TestClient, base_model: str) -> None:
    body = {"name": "r1", "base_model": base_model, "method": "grpo", "tags": {"lr": 1e-5}}
    first = client.post("/v1/runs", json=body)
    assert first.status_code == 201, first.text
    again = client.post("/v1/runs", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_registering_again_with_other_tags_keeps_the_stored_ones(client: TestClient, base_model: str) -> None:
    body = {"name": "r1", "base_model": base_model, "method": "sft", "tags": {"lr": "1e-5"}}
    client.post("/v1/runs", json=body)
    assert client.patch("/v1/runs/r1", json={"tags": {"seed": "3"}}).status_code == 200
    again = client.post("/v1/runs", json=body)  # a restarted trainer with its original call
    assert again.status_code == 200, again.text
    assert again.json()["tags"] == {"lr": "1e-5", "seed": "3"}


def test_same_name_different_definition_conflicts(client: TestClient, base_model: str) -> None:
    client.post("/v1/runs", json={"name": "r1", "base_model": base_model})
    response = client.post("/v1/runs", json={"name": "r1", "base_model": base_model, "method": "grpo"})
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


def test_list_and_get_by_id_or_name(client: TestClient, base_model: str) -> None:
    run_id = client.post("/v1/runs", json={"name": "r1", "base_model": base_model}).json()["id"]
    assert [r["name"] for r in client.get("/v1/runs").json()] == ["r1"]
    assert client.get(f"/v1/runs/{run_id}").json()["name"] == "r1"
    assert client.get("/v1/runs/r1").json()["id"] == run_id


def test_unknown_run_is_404_with_detail(client: TestClient) -> None:
    response = client.get("/v1/runs/999999999")
    assert response.status_code == 404
    assert "no run" in response.json()["detail"]


def test_invalid_bodies_are_422_with_detail(client: TestClient, base_model: str) -> None:
    for body in ({"name": "", "base_model": base_model}, {"base_model": base_model}, {"name": "x", "base_model": base_model,
                 "method": "Has Spaces"}, {"name": "x", "base_model": base_model, "unknown": 1}):
        response = client.post("/v1/runs", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"]


def test_run_with_unknown_probe_set_is_404(client: TestClient, base_model: str) -> None:
    response = client.post("/v1/runs", json={"name": "r", "base_model": base_model, "probe_sets": ["nope"]})
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_run_lists_attached_probe_sets(client: TestClient, base_model: str) -> None:
    client.post("/v1/probe-sets", json={"name": "math", "domain": "ood", "items": [{"prompt": "1+1="}]})
    run = client.post("/v1/runs", json={"name": "r", "base_model": base_model, "probe_sets": ["math"]}).json()
    assert run["probe_sets"] == ["math"]


def test_a_base_model_outside_the_allowed_roots_is_403_and_says_where_to_allow_it(client: TestClient,
                                                                                   tmp_path: Path) -> None:
    elsewhere = make_base_model(tmp_path / "elsewhere")
    for base in (str(elsewhere), f"file://{elsewhere}", "s3://models/base"):
        response = client.post("/v1/runs", json={"name": "r", "base_model": base})
        assert response.status_code == 403, base
        assert "FORGETWATCH_CHECKPOINT_ROOTS" in response.json()["detail"]
    assert client.get("/v1/runs").json() == []


def test_a_base_model_no_job_could_load_is_422_with_what_to_give(client: TestClient, checkpoint_root: Path) -> None:
    empty = checkpoint_root / "empty"
    empty.mkdir()
    (checkpoint_root / "notes.txt").write_text("not a model")
    unreadable = make_base_model(checkpoint_root / "locked")
    unreadable.chmod(0)
    cases = {str(checkpoint_root / "absent"): "does not exist",
             str(checkpoint_root / "notes.txt"): "not a weights file", "gpt2": "hf://gpt2",
             "models/base": "absolute path", "hf://org/absent": "huggingface-cli download org/absent"}
    if os.geteuid() != 0:  # root reads anything
        cases[str(unreadable)] = "cannot be read"
    try:
        for base, says in cases.items():
            response = client.post("/v1/runs", json={"name": "r", "base_model": base})
            assert response.status_code == 422, base
            assert says in response.json()["detail"], response.json()
    finally:
        unreadable.chmod(0o755)
    assert client.get("/v1/runs").json() == []
    # A folder is not judged by its contents: a trainer may register the run before writing the base.
    assert client.post("/v1/runs", json={"name": "early", "base_model": str(empty)}).status_code == 201
    # An existing name answers as before (200 for the same run, 409 for another), whatever the base.
    assert client.post("/v1/runs", json={"name": "early", "base_model": "/elsewhere"}).status_code == 409


def test_a_weights_file_or_a_model_folder_is_accepted(client: TestClient, checkpoint_root: Path) -> None:
    weights = checkpoint_root / "model.safetensors"
    weights.write_bytes(b"")  # only the name is checked here; the workers read the content
    only_weights = checkpoint_root / "weights-only"
    only_weights.mkdir()
    (only_weights / "pytorch_model.bin").write_bytes(b"")
    for i, base in enumerate((weights, only_weights, make_base_model(checkpoint_root / "with-config"))):
        assert client.post("/v1/runs", json={"name": f"r{i}", "base_model": str(base)}).status_code == 201, base
