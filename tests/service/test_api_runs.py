from fastapi.testclient import TestClient


def test_create_run_returns_201_then_200_for_identical(client: TestClient) -> None:
    body = {"name": "r1", "base_model": "/models/base", "method": "grpo", "tags": {"lr": 1e-5}}
    first = client.post("/v1/runs", json=body)
    assert first.status_code == 201, first.text
    again = client.post("/v1/runs", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_same_name_different_definition_conflicts(client: TestClient) -> None:
    client.post("/v1/runs", json={"name": "r1", "base_model": "/a"})
    response = client.post("/v1/runs", json={"name": "r1", "base_model": "/b"})
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


def test_list_and_get_by_id_or_name(client: TestClient) -> None:
    run_id = client.post("/v1/runs", json={"name": "r1", "base_model": "/a"}).json()["id"]
    assert [r["name"] for r in client.get("/v1/runs").json()] == ["r1"]
    assert client.get(f"/v1/runs/{run_id}").json()["name"] == "r1"
    assert client.get("/v1/runs/r1").json()["id"] == run_id


def test_unknown_run_is_404_with_detail(client: TestClient) -> None:
    response = client.get("/v1/runs/999999999")
    assert response.status_code == 404
    assert "no run" in response.json()["detail"]


def test_invalid_bodies_are_422_with_detail(client: TestClient) -> None:
    for body in ({"name": "", "base_model": "/a"}, {"base_model": "/a"}, {"name": "x", "base_model": "/a",
                 "method": "Has Spaces"}, {"name": "x", "base_model": "/a", "unknown": 1}):
        response = client.post("/v1/runs", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"]


def test_run_with_unknown_probe_set_is_404(client: TestClient) -> None:
    response = client.post("/v1/runs", json={"name": "r", "base_model": "/a", "probe_sets": ["nope"]})
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_run_lists_attached_probe_sets(client: TestClient) -> None:
    client.post("/v1/probe-sets", json={"name": "math", "domain": "ood", "items": [{"prompt": "1+1="}]})
    run = client.post("/v1/runs", json={"name": "r", "base_model": "/a", "probe_sets": ["math"]}).json()
    assert run["probe_sets"] == ["math"]
