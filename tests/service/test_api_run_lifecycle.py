"""Lists come a page at a time with filters; runs can be archived (kept, hidden from lists, pages and
/metrics) and deleted with everything measured for them (admin tokens only)."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.db.session import make_sessionmaker
from service.db.tokens import create_token
from service.settings import Settings


def _make_runs(client: TestClient, base_model: str, n: int) -> list[str]:
    names = [f"page-{i}" for i in range(n)]
    for i, name in enumerate(names):
        body = {"name": name, "base_model": base_model, "method": "grpo" if i % 2 else "sft",
                "tags": {"seed": i, "team": "a" if i < 3 else "b"}}
        assert client.post("/v1/runs", json=body).status_code == 201
    return names


def _all_pages(client: TestClient, url: str) -> tuple[list[str], int]:
    names, pages = [], 0
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        names += [r["name"] for r in response.json()]
        pages += 1
        url = httpx.Response(200, headers=response.headers).links.get("next", {}).get("url")
    return names, pages


def test_runs_come_a_page_at_a_time_following_the_link_header(client: TestClient, base_model: str) -> None:
    names = _make_runs(client, base_model, 5)
    listed, pages = _all_pages(client, "/v1/runs?limit=2")
    assert listed == names and pages == 3
    one_page = client.get("/v1/runs?limit=5")
    assert [r["name"] for r in one_page.json()] == names and "link" not in one_page.headers


def test_runs_are_filtered_by_method_and_tags(client: TestClient, base_model: str) -> None:
    _make_runs(client, base_model, 5)
    assert [r["name"] for r in client.get("/v1/runs?method=grpo").json()] == ["page-1", "page-3"]
    assert [r["name"] for r in client.get("/v1/runs?tag=team=a&tag=seed=2").json()] == ["page-2"]
    listed, _ = _all_pages(client, "/v1/runs?tag=team=b&limit=1")
    assert listed == ["page-3", "page-4"]
    bad = client.get("/v1/runs?tag=team")
    assert bad.status_code == 422 and "KEY=VALUE" in bad.json()["detail"]
    assert client.get("/v1/runs?limit=0").status_code == 422


def test_an_archived_run_is_kept_but_hidden_from_lists_pages_and_metrics(client: TestClient, base_model: str,
                                                                          checkpoint_root) -> None:
    _make_runs(client, base_model, 2)
    (checkpoint_root / "ck").mkdir()
    (checkpoint_root / "ck" / "model.safetensors").write_bytes(b"x")
    assert client.post("/v1/runs/page-0/checkpoints", json={"step": 1, "uri": str(checkpoint_root / "ck")}
                       ).status_code == 202
    assert 'run="page-0"' in client.get("/metrics").text

    archived = client.post("/v1/runs/page-0/archive")
    assert archived.status_code == 200 and archived.json()["archived_at"] is not None
    assert client.post("/v1/runs/page-0/archive").json()["archived_at"] == archived.json()["archived_at"]
    assert [r["name"] for r in client.get("/v1/runs").json()] == ["page-1"]
    assert [r["name"] for r in client.get("/v1/runs?archived=true").json()] == ["page-0"]
    assert "page-0" not in client.get("/").text
    assert 'run="page-0"' not in client.get("/metrics").text
    assert client.get("/v1/runs/page-0/checkpoints").json()[0]["step"] == 1  # everything is kept

    assert client.delete("/v1/runs/page-0/archive").json()["archived_at"] is None
    assert [r["name"] for r in client.get("/v1/runs").json()] == ["page-0", "page-1"]


def test_deleting_a_run_needs_an_admin_token_and_removes_rows_and_uploads(
        client: TestClient, base_model: str, settings: Settings, engine: Engine, tokens: dict[str, str]) -> None:
    run_id = client.post("/v1/runs", json={"name": "doomed", "base_model": base_model}).json()["id"]
    put = client.put(f"/v1/runs/{run_id}/checkpoints/3/files/model.safetensors", content=b"abc")
    assert put.status_code == 201
    assert client.post("/v1/runs/doomed/checkpoints", json={"step": 3}).status_code == 202
    uploads = settings.uploads_dir / str(run_id)
    assert uploads.exists()

    for scope in ("read", "write"):
        refused = client.delete("/v1/runs/doomed", headers={"Authorization": f"Bearer {tokens[scope]}"})
        assert refused.status_code == 403 and "scope" in refused.json()["detail"]
    refused = client.delete("/v1/runs/doomed", headers={"Authorization": f"Bearer {tokens['write']}"})
    assert "needs scope 'admin'" in refused.json()["detail"]
    assert client.get("/v1/runs/doomed").status_code == 200
    assert client.post("/v1/runs/doomed/archive", headers={"Authorization": f"Bearer {tokens['read']}"}
                       ).status_code == 403

    with make_sessionmaker(engine)() as session:
        admin = create_token(session, name="admin", scope="admin")
        session.commit()
    deleted = client.delete("/v1/runs/doomed", headers={"Authorization": f"Bearer {admin}"})
    assert deleted.status_code == 204
    assert client.get("/v1/runs/doomed").status_code == 404
    assert client.get(f"/v1/runs/{run_id}/checkpoints").status_code == 404
    assert not uploads.exists()
    assert client.delete("/v1/runs/doomed", headers={"Authorization": f"Bearer {admin}"}).status_code == 404
    # an admin token can also write
    assert client.post("/v1/runs", json={"name": "again", "base_model": base_model},
                       headers={"Authorization": f"Bearer {admin}"}).status_code == 201


def test_training_metrics_are_batched_idempotent_and_refuse_non_finite_values(client: TestClient,
                                                                               base_model: str) -> None:
    client.post("/v1/runs", json={"name": "metered", "base_model": base_model})
    body = {"points": [{"step": 20, "values": {"loss": 1.5, "rewards/accuracy/mean": 0.25}},
                       {"step": 10, "values": {"loss": 2.0}}]}
    first = client.post("/v1/runs/metered/metrics", json=body, headers={"Idempotency-Key": "m-1"})
    assert first.status_code == 202 and first.json()["accepted"] == 3
    assert client.post("/v1/runs/metered/metrics", json=body, headers={"Idempotency-Key": "m-1"}).json() == first.json()
    client.post("/v1/runs/metered/metrics", json={"points": [{"step": 10, "values": {"loss": 1.9}}]})
    series = client.get("/v1/runs/metered/metrics").json()["series"]
    assert series == {"loss": [{"step": 10, "value": 1.9}, {"step": 20, "value": 1.5}],
                      "rewards/accuracy/mean": [{"step": 20, "value": 0.25}]}
    for bad in ({"points": []}, {"points": [{"step": 1, "values": {}}]},
                {"points": [{"step": -1, "values": {"loss": 1.0}}]},
                {"points": [{"step": 1, "values": {"bad name!": 1.0}}]}):
        refused = client.post("/v1/runs/metered/metrics", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    nan = client.post("/v1/runs/metered/metrics", content=b'{"points": [{"step": 1, "values": {"loss": NaN}}]}',
                      headers={"Content-Type": "application/json"})
    assert nan.status_code == 422
    assert client.get("/v1/runs/metered/metrics").json()["series"]["loss"][0] == {"step": 10, "value": 1.9}
