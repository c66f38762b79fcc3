"""FORGETWATCH_ANALYSES: what a service analyses. Whatever is not listed is stored all the same, and
nothing waits on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.api.app import create_app
from service.settings import Settings, SettingsError


def _client(settings: Settings, engine: Engine, token: str, analyses: list[str]) -> TestClient:
    client = TestClient(create_app(settings=settings.model_copy(update={"analyses": analyses}), engine=engine))
    client.headers["Authorization"] = f"Bearer {token}"
    return client


@pytest.fixture
def probes_only(settings: Settings, engine: Engine, tokens: dict[str, str]) -> Iterator[TestClient]:
    with _client(settings, engine, tokens["write"], ["probes"]) as client:
        yield client


def _jobs(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT task_name FROM procrastinate_jobs ORDER BY id")).scalars().all()


def _checkpoint(root: Path, step: int) -> str:
    folder = root / f"step-{step}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    return str(folder)


def test_probes_only_queues_the_probe_analyses_and_stores_the_rest(
        probes_only: TestClient, engine: Engine, base_model: str, checkpoint_root: Path) -> None:
    client = probes_only
    assert client.post("/v1/probe-sets", json={"name": "ood", "domain": "ood", "items": [{"prompt": "1+1="}]}
                       ).status_code == 201
    run = client.post("/v1/runs", json={"name": "r", "base_model": base_model, "probe_sets": ["ood"]}).json()
    assert _jobs(engine) == ["forgetwatch:measure_base"]  # no spectral preparation of the base
    checkpoint = client.post(f"/v1/runs/{run['id']}/checkpoints", json={"step": 10, "uri": _checkpoint(checkpoint_root, 10)})
    assert checkpoint.status_code == 202, checkpoint.text
    assert [j["task"] for j in checkpoint.json()["jobs"]] == ["forgetwatch:probe_drift"]
    samples = client.post(f"/v1/runs/{run['id']}/samples",
                          json={"step": 10, "probe_set": "ood", "items": [{"prompt": "1+1=", "response": "2"}]})
    assert samples.status_code == 202, samples.text
    assert len(client.get(f"/v1/runs/{run['id']}/samples").json()) == 1  # stored, not analysed
    assert _jobs(engine) == ["forgetwatch:measure_base", "forgetwatch:probe_drift"]
    with engine.connect() as conn:
        kinds = conn.execute(text("SELECT kind FROM checkpoint_analyses")).scalars().all()
    assert kinds == ["responses"]


def test_a_checkpoint_with_nothing_to_analyse_is_ready_at_once(
        settings: Settings, engine: Engine, tokens: dict[str, str], base_model: str, checkpoint_root: Path) -> None:
    with _client(settings, engine, tokens["write"], ["probes"]) as client:  # a run without probe sets
        run = client.post("/v1/runs", json={"name": "r", "base_model": base_model}).json()
        checkpoint = client.post(f"/v1/runs/{run['id']}/checkpoints",
                                 json={"step": 10, "uri": _checkpoint(checkpoint_root, 10)})
        assert checkpoint.status_code == 202, checkpoint.text
        assert checkpoint.json()["status"] == "ready" and checkpoint.json()["jobs"] == []
        assert [c["status"] for c in client.get(f"/v1/runs/{run['id']}/checkpoints").json()] == ["ready"]
    assert _jobs(engine) == []


def test_an_unknown_analysis_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETWATCH_ANALYSES", "probes,spectra")
    with pytest.raises(SettingsError, match="FORGETWATCH_ANALYSES.*'params', 'probes' or 'samples'"):
        Settings.from_environment()
    monkeypatch.setenv("FORGETWATCH_ANALYSES", " probes , samples ")
    assert Settings.from_environment().analyses == ["probes", "samples"]
