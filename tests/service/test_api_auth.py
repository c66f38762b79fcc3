from fastapi.testclient import TestClient


def test_writes_need_a_token(client: TestClient, base_model: str) -> None:
    response = client.post("/v1/runs", json={"name": "r", "base_model": base_model}, headers={"Authorization": ""})
    assert response.status_code == 401
    assert "token" in response.json()["detail"]


def test_invalid_token_is_401(client: TestClient) -> None:
    response = client.get("/v1/runs", headers={"Authorization": "Bearer fw_not-a-real-token"})
    assert response.status_code == 401


def test_read_token_reads_but_cannot_write(client: TestClient, base_model: str, tokens: dict[str, str]) -> None:
    read = {"Authorization": f"Bearer {tokens['read']}"}
    assert client.get("/v1/runs", headers=read).status_code == 200
    response = client.post("/v1/runs", json={"name": "r", "base_model": base_model}, headers=read)
    assert response.status_code == 403
    assert "write" in response.json()["detail"]


def test_health_and_metrics_are_open(client: TestClient) -> None:
    bare = {"Authorization": ""}
    assert client.get("/healthz", headers=bare).status_code == 200
    ready = client.get("/readyz", headers=bare)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert "forgetwatch_queue_depth" in client.get("/metrics", headers=bare).text


def test_tokens_are_stored_hashed(client: TestClient, engine, tokens: dict[str, str]) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM api_tokens")).scalars().all()
    assert stored and not set(stored) & set(tokens.values())


def test_protected_metrics_need_a_read_token(client: TestClient, tokens: dict[str, str]) -> None:
    client.app.state.settings = client.app.state.settings.model_copy(update={"protect_metrics": True})
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401
    read = client.get("/metrics", headers={"Authorization": f"Bearer {tokens['read']}"})
    assert read.status_code == 200 and "forgetwatch_database_up 1.0" in read.text
