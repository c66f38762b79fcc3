"""GET /v1/jobs: every job a page at a time, filtered by run, status and kind, with the reason a
failed analysis gave; its `kind` values are exactly the worker's tasks."""

from __future__ import annotations

import typing
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from service.api.schemas import JobKind
from service.db import param_drift, queries
from service.queue.app import create_queue_app
from service.queue.defer import NAMESPACE
from tests.service.paging import every_page


def test_job_kinds_are_the_registered_tasks() -> None:
    for _ in range(2):  # a second App in the same process registers the same names
        app = create_queue_app("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connects
        tasks = {name.partition(":")[2] for name in app.tasks if name.startswith(f"{NAMESPACE}:")}
        assert tasks == set(typing.get_args(JobKind))
        ours = {name: task for name, task in app.tasks.items() if name.startswith(f"{NAMESPACE}:")}
        assert {task.name for task in ours.values()} == set(ours)


def test_jobs_list_by_run_status_and_kind_with_the_failure_reason(
    client: TestClient, base_model: str, checkpoint_root: Path, engine: Engine
) -> None:
    client.post("/v1/probe-sets", json={"name": "jobs-set", "domain": "ood", "items": [{"prompt": "1+1="}]})
    for run in ("jobs-a", "jobs-b"):
        assert (
            client.post(
                "/v1/runs", json={"name": run, "base_model": base_model, "probe_sets": ["jobs-set"]}
            ).status_code
            == 201
        )
        for step in (1, 2):
            folder = checkpoint_root / f"{run}-{step}"
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"x")
            assert (
                client.post(
                    f"/v1/runs/{run}/checkpoints", json={"step": step, "uri": str(folder)}
                ).status_code
                == 202
            )
    reason = "step-2: missing in object storage; register checkpoints only once every file is uploaded"
    with Session(engine) as session, session.begin():
        checkpoint = queries.get_checkpoint(session, run_id=queries.get_run(session, ref="jobs-a").id, step=2)
        param_drift.set_analysis(
            session, checkpoint_id=checkpoint.id, kind="responses", status="failed", error=reason
        )
        session.execute(
            text(
                "UPDATE procrastinate_jobs SET status = 'failed' "
                "WHERE task_name = 'forgetwatch:probe_drift' AND args->>'checkpoint_id' = :c"
            ),
            {"c": str(checkpoint.id)},
        )

    every = [job for page in every_page(client, "/v1/jobs?limit=3") for job in page]
    ids = [job["id"] for job in every]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) >= 12  # per run: measure_base, prepare_spectral_base, 2 jobs a step
    mine = [job for page in every_page(client, "/v1/jobs?run=jobs-a&limit=2") for job in page]
    assert {job["run"] for job in mine} == {"jobs-a"}
    assert sorted((job["kind"], job["step"]) for job in mine) == [
        ("measure_base", None),
        ("plan_param_drift", 1),
        ("plan_param_drift", 2),
        ("prepare_spectral_base", None),
        ("probe_drift", 1),
        ("probe_drift", 2),
    ]
    (failed,) = client.get("/v1/jobs", params={"run": "jobs-a", "status": "failed"}).json()
    assert (failed["kind"], failed["step"], failed["status"], failed["error"]) == (
        "probe_drift",
        2,
        "failed",
        reason,
    )
    assert client.get("/v1/jobs", params={"run": "jobs-b", "status": "failed"}).json() == []
    probes = client.get("/v1/jobs", params={"kind": "probe_drift"}).json()
    assert len(probes) == 4 and {job["task"] for job in probes} == {"forgetwatch:probe_drift"}
    assert client.get("/v1/jobs", params={"run": "no-such-run"}).status_code == 404
    assert client.get("/v1/jobs", params={"status": "exploded"}).status_code == 422
    assert client.get("/v1/jobs", params={"kind": "rm_rf"}).status_code == 422
