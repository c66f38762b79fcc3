import pytest
from fastapi.testclient import TestClient

ITEMS = [{"prompt": "1+1=", "reference": "2", "answer": "2"}]


@pytest.fixture
def run(client: TestClient, base_model: str) -> str:
    for name, domain in (
        ("math", "in_domain"),
        ("chem", "in_domain"),
        ("tools", "in_domain"),
        ("arith", "ood"),
    ):
        assert (
            client.post("/v1/probe-sets", json={"name": name, "domain": domain, "items": ITEMS}).status_code
            == 201
        )
    assert (
        client.post(
            "/v1/runs", json={"name": "staged", "base_model": base_model, "probe_sets": ["arith"]}
        ).status_code
        == 201
    )
    return "staged"


def test_stages_are_appended_in_order_with_their_retention_sets(client: TestClient, run: str) -> None:
    first = client.post(
        f"/v1/runs/{run}/stages", json={"name": "math", "start_step": 0, "probe_sets": ["math"]}
    )
    assert first.status_code == 201 and first.json()["position"] == 1
    assert first.json()["retention_sets"] == ["arith"]
    second = client.post(
        f"/v1/runs/{run}/stages", json={"name": "chem", "start_step": 100, "probe_sets": ["chem"]}
    )
    assert second.status_code == 201
    stages = client.get(f"/v1/runs/{run}/stages").json()
    assert [(s["name"], s["position"], s["start_step"], s["end_step"]) for s in stages] == [
        ("math", 1, 0, 100),
        ("chem", 2, 100, None),
    ]
    assert stages[1]["retention_sets"] == ["math", "arith"]
    # the stages' probe sets are the run's: checkpoints from now on are probed with them
    assert client.get(f"/v1/runs/{run}").json()["probe_sets"] == ["arith", "chem", "math"]


def test_the_same_stage_again_is_200_and_stores_nothing_new(client: TestClient, run: str) -> None:
    body = {"name": "math", "start_step": 10, "probe_sets": ["math"]}
    assert client.post(f"/v1/runs/{run}/stages", json=body).status_code == 201
    again = client.post(f"/v1/runs/{run}/stages", json=body)
    assert again.status_code == 200 and again.json()["position"] == 1
    assert len(client.get(f"/v1/runs/{run}/stages").json()) == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "math", "start_step": 5, "probe_sets": ["math"]}, 409, "cannot be redefined"),
        ({"name": "math", "start_step": 10, "probe_sets": ["chem"]}, 409, "cannot be redefined"),
        ({"name": "chem", "start_step": 10, "probe_sets": ["chem"]}, 409, "not after the last stage"),
        ({"name": "chem", "start_step": 3, "probe_sets": ["chem"]}, 409, "not after the last stage"),
        (
            {"name": "chem", "start_step": 20, "probe_sets": ["math", "chem"]},
            409,
            "already trained for by stage 'math'",
        ),
        ({"name": "chem", "start_step": 20, "probe_sets": ["nope"]}, 404, "unknown probe sets ['nope']"),
        ({"name": "chem", "start_step": 20, "probe_sets": []}, 422, "at least 1"),
        ({"name": "a/b", "start_step": 20, "probe_sets": ["chem"]}, 422, "pattern"),
    ],
)
def test_bad_stages_are_refused_with_the_reason_and_change_nothing(
    client: TestClient, run: str, body, status, words
) -> None:
    assert (
        client.post(
            f"/v1/runs/{run}/stages", json={"name": "math", "start_step": 10, "probe_sets": ["math"]}
        ).status_code
        == 201
    )
    response = client.post(f"/v1/runs/{run}/stages", json=body)
    assert response.status_code == status, response.text
    assert words in str(response.json()["detail"])
    stages = client.get(f"/v1/runs/{run}/stages").json()
    assert [(s["name"], s["start_step"], s["probe_sets"]) for s in stages] == [("math", 10, ["math"])]
    assert client.get(f"/v1/runs/{run}").json()["probe_sets"] == ["arith", "math"]


def test_transfer_of_a_run_without_stages_is_404_saying_how_to_declare_them(
    client: TestClient, run: str
) -> None:
    response = client.get(f"/v1/runs/{run}/transfer")
    assert response.status_code == 404 and "POST /v1/runs/{run}/stages" in response.json()["detail"]


def test_transfer_before_any_checkpoint_has_only_null_cells_with_reasons(
    client: TestClient, run: str
) -> None:
    client.post(f"/v1/runs/{run}/stages", json={"name": "math", "start_step": 0, "probe_sets": ["math"]})
    body = client.get(f"/v1/runs/{run}/transfer").json()
    assert [r["stage"] for r in body["rows"]] == [None, "math"]
    for metric in ("accuracy", "loglik"):
        found = body["metrics"][metric]
        assert [p["name"] for p in found["probe_sets"]] == ["math", "arith"]
        assert found["bwt"] is None and found["bwt_reason"]
        assert all(
            c["value"] is None and "no checkpoint has been analysed" in c["reason"]
            for row in found["matrix"]
            for c in row
        )
    retention = client.get(f"/v1/runs/{run}/stages/math/retention").json()
    assert retention["retention_sets"] == ["arith"] and retention["checkpoints"] == []
    assert client.get(f"/v1/runs/{run}/stages/other/retention").status_code == 404


def test_a_project_token_cannot_add_stages_to_another_projects_run(
    client: TestClient, run: str, engine
) -> None:
    from service.db.session import make_sessionmaker
    from service.db.tokens import create_token

    with make_sessionmaker(engine)() as session:
        token = create_token(session, name="team-a", scope="write", project="team-a/")
        session.commit()
    response = client.post(
        f"/v1/runs/{run}/stages",
        json={"name": "math", "start_step": 0, "probe_sets": ["math"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403 and "team-a/" in response.json()["detail"]
    assert client.get(f"/v1/runs/{run}/stages").json() == []


def test_a_run_with_stages_is_deleted_with_them_and_its_name_can_be_staged_anew(
    client: TestClient, run: str, engine, base_model: str
) -> None:
    from service.db.session import make_sessionmaker
    from service.db.tokens import create_token

    client.post(f"/v1/runs/{run}/stages", json={"name": "math", "start_step": 0, "probe_sets": ["math"]})
    with make_sessionmaker(engine)() as session:
        admin = create_token(session, name="admin", scope="admin")
        session.commit()
    assert client.delete(f"/v1/runs/{run}", headers={"Authorization": f"Bearer {admin}"}).status_code == 204
    assert client.get(f"/v1/runs/{run}/stages").status_code == 404
    client.post("/v1/runs", json={"name": run, "base_model": base_model})
    again = client.post(
        f"/v1/runs/{run}/stages", json={"name": "math", "start_step": 50, "probe_sets": ["math"]}
    )
    assert again.status_code == 201 and again.json()["start_step"] == 50
