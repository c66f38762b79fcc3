"""Every list that can grow comes a page at a time (`?limit=&after=`, the next page in the `Link`
header), with its filters kept on every page."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.service.paging import every_page


def test_checkpoints_come_a_page_at_a_time_and_filter_by_status(client: TestClient, base_model: str,
                                                                checkpoint_root: Path, engine: Engine) -> None:
    client.post("/v1/runs", json={"name": "paged", "base_model": base_model})
    for step in (30, 10, 50, 20, 40):
        folder = checkpoint_root / f"step-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        assert client.post("/v1/runs/paged/checkpoints", json={"step": step, "uri": str(folder)}).status_code == 202
    pages = every_page(client, "/v1/runs/paged/checkpoints?limit=2")
    assert [[c["step"] for c in p] for p in pages] == [[10, 20], [30, 40], [50]]
    with engine.begin() as conn:
        conn.execute(text("UPDATE checkpoints SET status = 'failed' WHERE step IN (20, 50)"))
    failed = every_page(client, "/v1/runs/paged/checkpoints?limit=1&status=failed")
    assert [[c["step"] for c in p] for p in failed] == [[20], [50]]
    assert client.get("/v1/runs/paged/checkpoints?status=lost").status_code == 422
    assert client.get("/v1/runs/paged/checkpoints?limit=0").status_code == 422


def test_probe_sets_come_a_page_at_a_time_in_name_order_and_filter_by_domain(client: TestClient) -> None:
    for name, domain in (("c", "ood"), ("a", "ood"), ("d", "in_domain"), ("b", "ood")):
        client.post("/v1/probe-sets", json={"name": name, "domain": domain, "items": [{"prompt": "1+1="}]})
    pages = every_page(client, "/v1/probe-sets?limit=3")
    assert [[p["name"] for p in page] for page in pages] == [["a", "b", "c"], ["d"]]
    ood = every_page(client, "/v1/probe-sets?limit=2&domain=ood")
    assert [[p["name"] for p in page] for page in ood] == [["a", "b"], ["c"]]


def test_labels_and_training_metrics_come_a_page_of_steps_at_a_time(client: TestClient, base_model: str) -> None:
    client.post("/v1/runs", json={"name": "logged", "base_model": base_model})
    for step in (3, 1, 2):
        client.post("/v1/runs/logged/labels", json={"step": step, "labels": {"acc": step / 10, "loss": 1 / step}})
    client.post("/v1/runs/logged/metrics", json={"points": [
        {"step": s, "values": {"loss": 1 / s, **({"reward": s / 10} if s != 2 else {})}} for s in (3, 1, 2)]})
    labels = every_page(client, "/v1/runs/logged/labels?limit=2")
    assert [[row["step"] for row in p["labels"]] for p in labels] == [[1, 2], [3]]
    assert labels[0]["labels"][0] == {"step": 1, "acc": 0.1, "loss": 1.0}
    metrics = every_page(client, "/v1/runs/logged/metrics?limit=2")
    assert [p["series"] for p in metrics] == [
        {"loss": [{"step": 1, "value": 1.0}, {"step": 2, "value": 0.5}], "reward": [{"step": 1, "value": 0.1}]},
        {"loss": [{"step": 3, "value": 1 / 3}], "reward": [{"step": 3, "value": 0.3}]},
    ]
    rewards = every_page(client, "/v1/runs/logged/metrics?limit=1&name=reward")
    assert [p["series"] for p in rewards] == [{"reward": [{"step": 1, "value": 0.1}]},
                                             {"reward": [{"step": 3, "value": 0.3}]}]


def test_samples_come_a_page_at_a_time_in_step_order(client: TestClient, base_model: str) -> None:
    client.post("/v1/runs", json={"name": "sampled", "base_model": base_model})
    for step in (20, 10):
        items = [{"prompt": f"p{step}-{i}", "response": "r"} for i in range(3)]
        assert client.post("/v1/runs/sampled/samples", json={"step": step, "items": items}).status_code == 202
    pages = every_page(client, "/v1/runs/sampled/samples?limit=4")
    assert [[s["prompt"] for s in p] for p in pages] == [["p10-0", "p10-1", "p10-2", "p20-0"], ["p20-1", "p20-2"]]
    only = every_page(client, "/v1/runs/sampled/samples?limit=2&step=20")
    assert [[s["prompt"] for s in p] for p in only] == [["p20-0", "p20-1"], ["p20-2"]]
    assert client.get("/v1/runs/sampled/samples?after=nope").status_code == 422


def test_drift_and_risk_series_come_a_page_of_steps_at_a_time(client: TestClient, checkpoint_root: Path,
                                                               engine: Engine) -> None:
    from sqlalchemy.orm import Session

    from drift.params import compare
    from service.db import param_drift, queries, response_drift, status
    from tests.integration.models import save_tiny_gpt2_run

    base, *steps = save_tiny_gpt2_run(checkpoint_root / "gpt2", steps=3)
    client.post("/v1/runs", json={"name": "series", "base_model": str(base)})
    for step, folder in zip((30, 10, 20), steps, strict=True):
        assert client.post("/v1/runs/series/checkpoints", json={"step": step, "uri": str(folder)}).status_code == 202
    with Session(engine) as session, session.begin():
        run = queries.get_run(session, ref="series")
        for step, folder in zip((30, 10, 20), steps, strict=True):
            checkpoint = queries.get_checkpoint(session, run_id=run.id, step=step)
            param_drift.replace_summaries(session, checkpoint_id=checkpoint.id,
                                          summary=compare(base, folder, spectral=False).summary)
            status.store_assessment(session, checkpoint_id=checkpoint.id, applicable=True, value=step / 100,
                                    model="test", reason=None, reason_code=None, changepoint=False, features={},
                                    forecasts={}, findings=[], detected=False, detection={}, heuristic={})
        for step in (40, 10, 25):
            response_drift.store_sample_result(session, run_id=run.id, step=step, probe_set="chat",
                                               values={"n_samples": step}, data={})

    whole = client.get("/v1/runs/series/param-drift").json()
    assert "Link" not in client.get("/v1/runs/series/param-drift").headers
    pages = every_page(client, "/v1/runs/series/param-drift?limit=2")
    assert [[p["step"] for p in page["global"]] for page in pages] == [[10, 20], [30]]
    assert [point for page in pages for point in page["global"]] == whole["global"]
    blocks = {b: [p for page in pages for p in page["blocks"][b]] for b in pages[0]["blocks"]}
    assert blocks == whole["blocks"] and len(blocks) == 2  # the tiny GPT-2 has two layers

    risk = every_page(client, "/v1/runs/series/risk?limit=1")
    assert [[(r["step"], r["value"]) for r in page["series"]] for page in risk] == [[(10, 0.1)], [(20, 0.2)],
                                                                                    [(30, 0.3)]]
    responses = every_page(client, "/v1/runs/series/response-drift?limit=2")
    assert [[s["step"] for s in page["samples"]] for page in responses] == [[10, 25], [40]]
    assert client.get("/v1/runs/series/response-drift?after=25").json()["samples"][0]["n_samples"] == 40
    for path in ("param-drift", "response-drift", "risk"):
        assert client.get(f"/v1/runs/series/{path}?limit=0").status_code == 422
        assert client.get(f"/v1/runs/series/{path}?after=-1").status_code == 422
