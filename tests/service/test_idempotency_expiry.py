"""Idempotency keys are remembered for IDEMPOTENCY_TTL, then forgotten: the table does not grow forever."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from service.db.idempotency import IDEMPOTENCY_TTL, forget_expired
from service.db.models import IdempotencyRecord
from service.db.session import make_sessionmaker


def _age_records(engine: Engine, by) -> None:
    with make_sessionmaker(engine)() as session:
        session.execute(update(IdempotencyRecord).values(created_at=IdempotencyRecord.created_at - by))
        session.commit()


def test_a_key_replays_within_its_time_and_is_new_after_it(client: TestClient, base_model: str, engine: Engine) -> None:
    first = client.post("/v1/runs", json={"name": "kept-key", "base_model": base_model}, headers={"Idempotency-Key": "k"})
    assert first.status_code == 201
    other = {"name": "other-run", "base_model": base_model}
    assert client.post("/v1/runs", json=other, headers={"Idempotency-Key": "k"}).status_code == 409  # key in use

    _age_records(engine, IDEMPOTENCY_TTL * 0.9)
    assert client.post("/v1/runs", json={"name": "kept-key", "base_model": base_model},
                       headers={"Idempotency-Key": "k"}).json() == first.json()  # replayed, still in time

    _age_records(engine, IDEMPOTENCY_TTL * 0.2)
    fresh = client.post("/v1/runs", json=other, headers={"Idempotency-Key": "k"})
    assert fresh.status_code == 201 and fresh.json()["name"] == "other-run"


def test_housekeeping_deletes_only_expired_records(client: TestClient, base_model: str, engine: Engine) -> None:
    for i in range(3):
        client.post("/v1/runs", json={"name": f"old-{i}", "base_model": base_model}, headers={"Idempotency-Key": f"o{i}"})
    _age_records(engine, IDEMPOTENCY_TTL * 1.1)
    client.post("/v1/runs", json={"name": "new", "base_model": base_model}, headers={"Idempotency-Key": "n"})
    with make_sessionmaker(engine).begin() as session:
        assert forget_expired(session) == 3
    with make_sessionmaker(engine)() as session:
        assert [r.key for r in session.query(IdempotencyRecord).all()] == ["n"]


def test_an_expired_key_takes_a_new_sample_batch(client: TestClient, base_model: str, engine: Engine) -> None:
    client.post("/v1/runs", json={"name": "r", "base_model": base_model})
    batch = {"step": 1, "items": [{"prompt": "p", "response": "r"}]}
    assert client.post("/v1/runs/r/samples", json=batch, headers={"Idempotency-Key": "k"}).status_code == 202
    other = {**batch, "step": 2}
    assert client.post("/v1/runs/r/samples", json=other, headers={"Idempotency-Key": "k"}).status_code == 409
    _age_records(engine, IDEMPOTENCY_TTL * 1.1)
    fresh = client.post("/v1/runs/r/samples", json=other, headers={"Idempotency-Key": "k"})
    assert fresh.status_code == 202 and fresh.json()["step"] == 2
    assert client.post("/v1/runs/r/samples", json=other, headers={"Idempotency-Key": "k"}).json() == fresh.json()
    assert sorted(s["step"] for s in client.get("/v1/runs/r/samples").json()) == [1, 2]
