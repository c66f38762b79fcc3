"""A token limited to a project writes only the runs and probe sets whose names start with its
prefix (by name or by id, on every write route), reads everything, and cannot squat other names."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.db.session import make_sessionmaker
from service.db.tokens import create_token


def _token(engine: Engine, scope: str, project: str | None) -> dict[str, str]:
    with make_sessionmaker(engine)() as session:
        token = create_token(session, name=f"{scope}-{project}", scope=scope, project=project)
        session.commit()
    return {"Authorization": f"Bearer {token}"}


def test_a_project_token_writes_its_own_runs_only(client: TestClient, base_model: str, engine: Engine, checkpoint_root) -> None:
    team_a = _token(engine, "write", "team-a-")
    other_id = client.post("/v1/runs", json={"name": "team-b-run", "base_model": base_model}).json()["id"]
    assert client.post("/v1/runs", json={"name": "team-a-run", "base_model": base_model}, headers=team_a).status_code == 201
    refused = client.post("/v1/runs", json={"name": "team-b-other", "base_model": base_model}, headers=team_a)
    assert refused.status_code == 403 and "team-a-" in refused.json()["detail"]

    (checkpoint_root / "ck").mkdir()
    (checkpoint_root / "ck" / "model.safetensors").write_bytes(b"x")
    writes = [("POST", "checkpoints", {"step": 1, "uri": str(checkpoint_root / "ck")}),
              ("POST", "samples", {"step": 1, "items": [{"prompt": "p", "response": "r"}]}),
              ("POST", "labels", {"step": 1, "labels": {"ood_accuracy": 0.5}}),
              ("POST", "metrics", {"points": [{"step": 1, "values": {"loss": 1.0}}]}),
              ("POST", "archive", None)]
    for ref in ("team-b-run", str(other_id)):
        for method, tail, body in writes:
            response = client.request(method, f"/v1/runs/{ref}/{tail}", json=body, headers=team_a)
            assert response.status_code == 403, (ref, tail, response.text)
        upload = client.put(f"/v1/runs/{ref}/checkpoints/2/files/model.safetensors", content=b"x", headers=team_a)
        assert upload.status_code == 403
    for method, tail, body in writes:
        response = client.request(method, f"/v1/runs/team-a-run/{tail}", json=body, headers=team_a)
        assert response.status_code in (200, 202), (tail, response.text)
    assert client.get("/v1/runs/team-b-run/checkpoints", headers=team_a).status_code == 200  # reads everything
    assert client.get("/v1/runs/team-b-run/checkpoints").json() == []  # nothing was written there


def test_a_project_token_cannot_squat_probe_set_names_or_delete_other_runs(client: TestClient, base_model: str,
                                                                           engine: Engine) -> None:
    items = [{"prompt": "1+1=", "answer": "2"}]
    team_a = _token(engine, "write", "team-a-")
    assert client.post("/v1/probe-sets", json={"name": "arith", "domain": "ood", "items": items},
                       headers=team_a).status_code == 403
    assert client.post("/v1/probe-sets", json={"name": "team-a-arith", "domain": "ood", "items": items},
                       headers=team_a).status_code == 201
    client.post("/v1/runs", json={"name": "team-b-kept", "base_model": base_model})
    team_a_admin = _token(engine, "admin", "team-a-")
    assert client.delete("/v1/runs/team-b-kept", headers=team_a_admin).status_code == 403
    assert client.get("/v1/runs/team-b-kept").status_code == 200
