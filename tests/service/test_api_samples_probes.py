import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def run_id(client: TestClient, base_model: str) -> int:
    return client.post("/v1/runs", json={"name": "r", "base_model": base_model}).json()["id"]


def test_samples_are_stored_and_read_back(client: TestClient, run_id: int) -> None:
    items = [{"prompt": "2+2=", "response": "4", "logprobs": [-0.1]}, {"prompt": "héllo", "response": "wörld"}]
    response = client.post(f"/v1/runs/{run_id}/samples", json={"step": 5, "items": items})
    assert response.status_code == 202
    assert response.json()["accepted"] == 2
    stored = client.get(f"/v1/runs/{run_id}/samples", params={"step": 5}).json()
    assert [(s["prompt"], s["response"], s["logprobs"]) for s in stored] == [
        ("2+2=", "4", [-0.1]), ("héllo", "wörld", None)]


def test_sample_retries_with_key_are_stored_once(client: TestClient, run_id: int) -> None:
    body = {"step": 1, "items": [{"prompt": "p", "response": "r"}]}
    for _ in range(3):
        assert client.post(f"/v1/runs/{run_id}/samples", json=body, headers={"Idempotency-Key": "s1"}).status_code == 202
    assert len(client.get(f"/v1/runs/{run_id}/samples").json()) == 1


def test_too_many_items_is_413(client: TestClient, run_id: int, settings) -> None:
    client.app.state.settings = settings.model_copy(update={"max_samples_per_request": 3})
    body = {"step": 1, "items": [{"prompt": "p", "response": "r"}] * 4}
    response = client.post(f"/v1/runs/{run_id}/samples", json=body)
    assert response.status_code == 413
    assert "at most 3" in response.json()["detail"]


def test_oversized_body_is_413(client: TestClient, run_id: int, settings) -> None:
    body = {"step": 1, "items": [{"prompt": "p" * 100_000, "response": "r"}] * 200}
    response = client.post(f"/v1/runs/{run_id}/samples", content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_invalid_utf8_is_400_and_broken_json_is_422(client: TestClient, run_id: int) -> None:
    cases = {b'{"step": 1, "items": [{"prompt": "\xff\xfe", "response": "r"}]}': 400, b'{"step": 1,': 422}
    for raw, status in cases.items():
        response = client.post(f"/v1/runs/{run_id}/samples", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == status
        assert response.json()["detail"]
    assert client.get(f"/v1/runs/{run_id}/samples").json() == []


def test_samples_for_unknown_probe_set_are_404(client: TestClient, run_id: int) -> None:
    body = {"step": 1, "probe_set": "nope", "items": [{"prompt": "p", "response": "r"}]}
    assert client.post(f"/v1/runs/{run_id}/samples", json=body).status_code == 404


def test_probe_set_round_trip_and_immutability(client: TestClient) -> None:
    body = {"name": "arith", "domain": "ood", "items": [{"prompt": "1+1=", "reference": "2", "answer": "2"},
                                                        {"prompt": "2+3="}]}
    assert client.post("/v1/probe-sets", json=body).status_code == 201
    assert client.post("/v1/probe-sets", json=body).status_code == 200
    got = client.get("/v1/probe-sets/arith").json()
    assert got["domain"] == "ood"
    assert [i["prompt"] for i in got["items"]] == ["1+1=", "2+3="]
    changed = {**body, "items": body["items"][:1]}
    assert client.post("/v1/probe-sets", json=changed).status_code == 409
    assert client.get("/v1/probe-sets/unknown").status_code == 404
    assert [p["name"] for p in client.get("/v1/probe-sets").json()] == ["arith"]


def test_probe_set_domain_is_validated(client: TestClient) -> None:
    body = {"name": "x", "domain": "elsewhere", "items": [{"prompt": "p"}]}
    assert client.post("/v1/probe-sets", json=body).status_code == 422


def test_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/123456").status_code == 404


def test_request_metrics_use_route_templates(client: TestClient, run_id: int) -> None:
    client.get(f"/v1/runs/{run_id}")
    text = client.get("/metrics").text
    assert 'route="/v1/runs/{run_ref}"' in text
    assert f'/v1/runs/{run_id}"' not in text


CHAT = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
         "reference": "4", "answer": "4"}]


def test_chat_probe_sets_round_trip_and_are_immutable(client: TestClient) -> None:
    created = client.post("/v1/probe-sets", json={"name": "chat", "domain": "ood", "format": "chat", "items": CHAT})
    assert created.status_code == 201, created.text
    body = client.get("/v1/probe-sets/chat").json()
    assert body["format"] == "chat" and body["items"][0]["messages"] == CHAT[0]["messages"]
    assert body["items"][0]["prompt"] == "2+2?"  # the last user turn, for display
    again = client.post("/v1/probe-sets", json={"name": "chat", "domain": "ood", "format": "chat", "items": CHAT})
    assert again.status_code == 200
    other = [{**CHAT[0], "messages": CHAT[0]["messages"][1:]}]  # without the system turn: another probe
    assert client.post("/v1/probe-sets", json={"name": "chat", "domain": "ood", "format": "chat",
                                               "items": other}).status_code == 409
    as_text = client.post("/v1/probe-sets", json={"name": "chat", "domain": "ood", "items": [{"prompt": "2+2?"}]})
    assert as_text.status_code == 409  # same name, another format


@pytest.mark.parametrize(("fmt", "item", "says"), [
    ("text", {"messages": [{"role": "user", "content": "hi"}]}, "format"),
    ("chat", {"prompt": "hi"}, "messages"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "user"),
    ("chat", {"messages": [{"role": "tool", "content": "hi"}]}, "role"),
])
def test_chat_items_that_do_not_fit_their_format_are_422(client: TestClient, fmt: str, item: dict, says: str) -> None:
    response = client.post("/v1/probe-sets", json={"name": "bad", "domain": "ood", "format": fmt, "items": [item]})
    assert response.status_code == 422 and says in json.dumps(response.json()["detail"]), response.text


def _at_once(send, n: int = 8) -> list:
    barrier = threading.Barrier(n)

    def one(i: int):
        barrier.wait()
        return send(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_one_key_sent_by_many_at_once_is_acted_on_once(client: TestClient, run_id: int) -> None:
    """The optimistic idempotency path: concurrent first requests with one key store one batch and all
    answer with its response; with different bodies, one wins and the others are told the key is taken."""
    body = {"step": 7, "items": [{"prompt": "p", "response": "r"}] * 3}
    responses = _at_once(lambda _: client.post(f"/v1/runs/{run_id}/samples", json=body,
                                               headers={"Idempotency-Key": "together"}))
    assert [r.status_code for r in responses] == [202] * 8
    assert all(r.json() == responses[0].json() for r in responses)
    assert len(client.get(f"/v1/runs/{run_id}/samples", params={"step": 7}).json()) == 3
    responses = _at_once(lambda i: client.post(f"/v1/runs/{run_id}/samples", json={**body, "step": 100 + i},
                                               headers={"Idempotency-Key": "contested"}))
    assert sorted(r.status_code for r in responses) == [202] + [409] * 7
    (winner,) = [r.json()["step"] for r in responses if r.status_code == 202]
    stored = client.get(f"/v1/runs/{run_id}/samples").json()
    assert {s["step"] for s in stored} == {7, winner} and len(stored) == 6
    assert all("already used for a different request" in r.json()["detail"] for r in responses if r.status_code == 409)


def test_a_batch_queues_the_job_enqueue_samples_queues(client: TestClient, run_id: int, engine) -> None:
    """The ingest statement queues its analysis itself (`service.db.ingest`); it must be the very job
    `enqueue_samples` (used by `forgetwatch reanalyze`) queues: same task, queue, arguments, lock."""
    from sqlalchemy import text

    from service.db.session import make_sessionmaker
    from service.queue.defer import enqueue_samples

    probe_set = {"name": "ood", "domain": "ood", "items": [{"prompt": "1+1=", "reference": "2"}]}
    assert client.post("/v1/probe-sets", json=probe_set).status_code == 201
    assert client.post("/v1/runs/r/samples", json={"step": 3, "items": [{"prompt": "p", "response": "r"}]}
                       ).status_code == 202  # by name
    assert client.post(f"/v1/runs/{run_id}/samples", json={
        "step": 4, "probe_set": "ood", "items": [{"prompt": "p", "response": "r"}]}).status_code == 202  # by id
    jobs = text("SELECT queue_name, task_name, priority, lock, queueing_lock, args FROM procrastinate_jobs "
                "WHERE task_name = 'forgetwatch:sample_drift' ORDER BY id")
    with engine.connect() as conn:
        by_ingest = conn.execute(jobs).all()
        conn.execute(text("DELETE FROM procrastinate_jobs"))
        conn.commit()
    with make_sessionmaker(engine).begin() as session:
        enqueue_samples(session, run_id=run_id, step=3, probe_set=None)
        enqueue_samples(session, run_id=run_id, step=4, probe_set="ood")
    with engine.connect() as conn:
        by_defer = conn.execute(jobs).all()
    assert by_ingest == by_defer and len(by_defer) == 2
    assert client.post("/v1/runs/r/samples", json={"step": 3, "items": [{"prompt": "p2", "response": "r2"}]}
                       ).status_code == 202
    with engine.connect() as conn:  # a job already waiting for the batch's step will do
        assert len(conn.execute(jobs).all()) == 2


def test_a_batch_for_an_unknown_run_or_probe_set_stores_nothing(client: TestClient, run_id: int, engine) -> None:
    from sqlalchemy import text

    item = {"prompt": "p", "response": "r"}
    missing_run = client.post("/v1/runs/nope/samples", json={"step": 1, "items": [item]},
                              headers={"Idempotency-Key": "a"})
    assert missing_run.status_code == 404 and "no run 'nope'" in missing_run.json()["detail"]
    missing_set = client.post(f"/v1/runs/{run_id}/samples", json={"step": 1, "probe_set": "absent", "items": [item]},
                              headers={"Idempotency-Key": "b"})
    assert missing_set.status_code == 404 and "absent" in missing_set.json()["detail"]
    with engine.connect() as conn:
        counts = conn.execute(text("SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM procrastinate_jobs "
                                   "WHERE task_name = 'forgetwatch:sample_drift'), (SELECT count(*) FROM idempotency_keys)"
                                   )).one()
    assert tuple(counts) == (0, 0, 0)
    assert client.post(f"/v1/runs/{run_id}/samples", json={"step": 1, "items": [item]},
                       headers={"Idempotency-Key": "a"}).status_code == 202  # a refused call did not take the key
