"""The pre-flight preview of a stage, end to end: posted through the real app, embedded and forecast by the
real procrastinate worker (run in-process until the queue is empty), read back through the API."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.db.session import make_sessionmaker
from service.queue.app import create_queue_app
from service.queue.tasks import WorkerServices
from service.settings import Settings

MATH = [{"prompt": f"{x}+{y}=", "reference": str(x + y), "answer": str(x + y)} for x in range(4) for y in range(3)]
WORDS = [{"prompt": f"spell the word {w} backwards:", "reference": w[::-1], "answer": w[::-1]}
         for w in ("cat", "house", "river", "stone", "cloud", "green", "table", "light", "paper", "music")]
PREVIEW = [f"{x}*{y}=" for x in range(3) for y in range(4)]


def drain(settings: Settings, engine: Engine) -> None:
    """Run every queued job to its end with the real worker, then return."""
    services = WorkerServices(settings=settings, engine=engine, sessions=make_sessionmaker(engine))
    app = create_queue_app(settings.database_url or "")

    async def work() -> None:
        async with app.open_async():
            await app.run_worker_async(wait=False, concurrency=1, install_signal_handlers=False,
                                       additional_context={"services": services})

    asyncio.run(work())


@pytest.fixture
def run(client: TestClient, base_model: str) -> str:
    for name, domain, items in (("math", "in_domain", MATH), ("words", "ood", WORDS)):
        assert client.post("/v1/probe-sets", json={"name": name, "domain": domain, "items": items}).status_code == 201
    assert client.post("/v1/runs", json={"name": "staged", "base_model": base_model,
                                         "probe_sets": ["words"]}).status_code == 201
    response = client.post("/v1/runs/staged/stages", json={"name": "math", "start_step": 0, "probe_sets": ["math"]})
    assert response.status_code == 201, response.text
    return "staged"


def _add_second_stage(client: TestClient) -> None:
    assert client.post("/v1/probe-sets", json={"name": "tools", "domain": "in_domain",
                                               "items": [{"prompt": p, "answer": "0"} for p in PREVIEW]}
                       ).status_code == 201
    assert client.post("/v1/runs/staged/stages", json={"name": "tools", "start_step": 100,
                                                       "probe_sets": ["tools"]}).status_code == 201


@pytest.mark.timeout(600)
def test_a_preview_is_embedded_and_forecast_per_retention_set_with_the_prior(
    client: TestClient, run: str, settings: Settings, engine: Engine
) -> None:
    _add_second_stage(client)
    posted = client.post(f"/v1/runs/{run}/stages/tools/preview", json={"prompts": PREVIEW})
    assert posted.status_code == 202, posted.text
    assert posted.json() == {"stage": "tools", "status": "pending", "n_prompts": 12, "forecast": None,
                             "error": None}
    assert client.get(f"/v1/runs/{run}/stages/tools/preview").json()["status"] == "pending"
    drain(settings, engine)
    found = client.get(f"/v1/runs/{run}/stages/tools/preview").json()
    assert found["status"] == "done", found
    forecast = found["forecast"]
    assert [e["probe_set"] for e in forecast["retention_sets"]] == ["math", "words"]
    assert forecast["curve"]["source"] == "prior" and forecast["history"] == []
    assert "prior" in forecast["note"]
    by_set = {e["probe_set"]: e for e in forecast["retention_sets"]}
    for entry in by_set.values():
        assert 0 <= entry["distance"] <= 2**0.5
        assert entry["ci_low"] < entry["loss"] < entry["ci_high"]
    # multiplication prompts lie nearer to addition prompts than to spelling instructions
    assert by_set["math"]["distance"] < by_set["words"]["distance"]


@pytest.mark.timeout(600)
def test_posting_again_replaces_the_preview_and_its_forecast(
    client: TestClient, run: str, settings: Settings, engine: Engine
) -> None:
    assert client.post(f"/v1/runs/{run}/stages/math/preview", json={"prompts": PREVIEW}).status_code == 202
    drain(settings, engine)
    first = client.get(f"/v1/runs/{run}/stages/math/preview").json()
    assert first["status"] == "done" and [e["probe_set"] for e in first["forecast"]["retention_sets"]] == ["words"]
    again = client.post(f"/v1/runs/{run}/stages/math/preview", json={"prompts": PREVIEW + ["9*9="]})
    assert again.status_code == 202
    assert client.get(f"/v1/runs/{run}/stages/math/preview").json() == {
        "stage": "math", "status": "pending", "n_prompts": 13, "forecast": None, "error": None}


def test_a_preview_of_three_prompts_is_422_saying_how_many_are_needed(client: TestClient, run: str) -> None:
    response = client.post(f"/v1/runs/{run}/stages/math/preview", json={"prompts": PREVIEW[:3]})
    assert response.status_code == 422
    assert "at least 8 prompts" in response.text and "got 3" in response.text
    assert client.get(f"/v1/runs/{run}/stages/math/preview").status_code == 404


def test_an_oversize_prompt_is_422_in_characters_and_stores_nothing(client: TestClient, run: str) -> None:
    response = client.post(f"/v1/runs/{run}/stages/math/preview", json={"prompts": [*PREVIEW[:7], "x" * 20_001]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "prompts", 7] and "at most 20000 characters" in error["msg"]
    assert client.get(f"/v1/runs/{run}/stages/math/preview").status_code == 404


def test_a_preview_of_an_unknown_stage_or_run_is_404_saying_what_to_do(client: TestClient, run: str) -> None:
    response = client.post(f"/v1/runs/{run}/stages/code/preview", json={"prompts": PREVIEW})
    assert response.status_code == 404 and "POST /v1/runs/{run}/stages" in response.json()["detail"]
    assert client.post("/v1/runs/nope/stages/math/preview", json={"prompts": PREVIEW}).status_code == 404
    missing = client.get(f"/v1/runs/{run}/stages/math/preview")
    assert missing.status_code == 404 and "POST /v1/runs/{run}/stages/math/preview" in missing.json()["detail"]


def test_a_read_token_cannot_post_a_preview(client: TestClient, run: str, tokens: dict[str, str]) -> None:
    response = client.post(f"/v1/runs/{run}/stages/math/preview", json={"prompts": PREVIEW},
                           headers={"Authorization": f"Bearer {tokens['read']}"})
    assert response.status_code == 403
    assert client.get(f"/v1/runs/{run}/stages/math/preview",
                      headers={"Authorization": f"Bearer {tokens['read']}"}).status_code == 404


def test_the_openapi_document_states_the_preview_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PreviewCreate"]
    prompts = schema["properties"]["prompts"]
    assert (prompts["minItems"], prompts["maxItems"]) == (8, 2000)
    assert prompts["items"]["minLength"] == 1


def test_a_project_token_cannot_post_a_preview_to_another_projects_run(client: TestClient, run: str,
                                                                       engine: Engine) -> None:
    from service.db.tokens import create_token

    with make_sessionmaker(engine)() as session:
        token = create_token(session, name="team-a", scope="write", project="team-a/")
        session.commit()
    response = client.post(f"/v1/runs/{run}/stages/math/preview", json={"prompts": PREVIEW},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403 and "team-a/" in response.json()["detail"]
    assert client.get(f"/v1/runs/{run}/stages/math/preview").status_code == 404
