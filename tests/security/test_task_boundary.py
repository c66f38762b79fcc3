"""No analysis stays `processing` forever: the task boundary fails it on any error, and the sweeper
fails analyses whose jobs all ended without a result."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from service.db.session import make_sessionmaker
from service.queue.tasks import AnalysisFailed, WorkerServices, failing_analysis, sweep_orphaned_analyses
from tests.security import corpus


@pytest.fixture
def services(settings, engine: Engine) -> WorkerServices:
    return WorkerServices(settings=settings, engine=engine, sessions=make_sessionmaker(engine))


@pytest.fixture
def checkpoint(client: TestClient, checkpoint_root: Path) -> dict:
    base = corpus.valid(checkpoint_root / "base.safetensors")
    ckpt = corpus.valid(checkpoint_root / "step-1.safetensors", seed=1)
    assert client.post("/v1/runs", json={"name": "r", "base_model": str(base)}).status_code == 201
    response = client.post("/v1/runs/r/checkpoints", json={"step": 1, "uri": str(ckpt)})
    assert response.status_code == 202
    return response.json()


def _state(client: TestClient) -> tuple[str, str | None]:
    body = client.get("/v1/runs/r/checkpoints/1").json()
    return body["status"], body["error"]


@pytest.mark.parametrize("error", [OverflowError("int too large to convert"), RecursionError("maximum depth"),
                                   TypeError("'float' object cannot be interpreted as an integer"),
                                   MemoryError()], ids=lambda e: type(e).__name__)
def test_any_error_at_the_task_boundary_fails_the_analysis(client: TestClient, services: WorkerServices,
                                                           checkpoint: dict, error: Exception) -> None:
    with pytest.raises(AnalysisFailed), failing_analysis(services, checkpoint_id=checkpoint["id"], kind="params"):
        raise error
    status, reason = _state(client)
    assert status == "failed"
    assert reason.startswith(f"params: {type(error).__name__}")
    assert "Traceback" not in reason


def test_transient_errors_pass_the_boundary_for_a_retry(client: TestClient, services: WorkerServices,
                                                        checkpoint: dict) -> None:
    down = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    with pytest.raises(OperationalError), failing_analysis(services, checkpoint_id=checkpoint["id"], kind="params"):
        raise down
    assert _state(client) == ("pending", None)


def test_sweeper_fails_an_analysis_whose_jobs_all_ended(client: TestClient, services: WorkerServices,
                                                        engine: Engine, checkpoint: dict) -> None:
    assert sweep_orphaned_analyses(services) == []  # its plan job is still queued: not an orphan
    assert _state(client)[0] == "pending"
    with engine.begin() as conn:
        (job_id,) = [job["id"] for job in checkpoint["jobs"]]
        conn.execute(text("SELECT procrastinate_cancel_job_v1(:j, false, false)"), {"j": job_id})
    assert sweep_orphaned_analyses(services) == [checkpoint["id"]]
    status, reason = _state(client)
    assert status == "failed"
    assert "its jobs ended without a result" in reason
    assert sweep_orphaned_analyses(services) == []  # failed is final: nothing to do twice
    risk_jobs = [j for j in client.get("/v1/runs/r/checkpoints/1").json()["jobs"] if j["queue"] == "maintenance"]
    assert len(risk_jobs) == 1  # the risk is reassessed with the analysis failed
