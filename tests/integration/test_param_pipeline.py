"""Parameter drift through the queue, with real `forgetwatch worker` processes."""

import signal
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import text

from drift.checkpoints import list_tensors
from service.queue.param_tasks import spectral_base_parts
from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for, write_sparse_safetensors
from tests.integration.models import save_tiny_gpt2_run


def _checkpoint(client: TestClient, run: str, step: int) -> dict:
    return client.get(f"/v1/runs/{run}/checkpoints/{step}").json()


def _finished(client: TestClient, run: str, step: int):
    checkpoint = _checkpoint(client, run, step)
    return checkpoint if checkpoint["status"] in ("ready", "failed") else None


def _job_ended(checkpoint: dict | None) -> dict | None:
    """The checkpoint once its first job has ended too (not only its analysis)."""
    jobs = checkpoint["jobs"] if checkpoint else []
    return checkpoint if jobs and jobs[0]["status"] in ("succeeded", "failed") else None


def _register_tiny_run(client: TestClient, root: Path, steps: int = 2) -> list[Path]:
    paths = save_tiny_gpt2_run(root, steps=steps)
    client.post("/v1/runs", json={"name": "tiny", "base_model": str(paths[0]), "method": "sft"})
    for step, path in enumerate(paths[1:], start=1):
        assert client.post("/v1/runs/tiny/checkpoints", json={"step": step, "uri": str(path)}).status_code == 202
    return paths


def test_worker_computes_param_drift_for_each_checkpoint(client: TestClient, settings, checkpoint_root: Path,
                                                         tmp_path: Path) -> None:
    _register_tiny_run(client, checkpoint_root)
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        for step in (1, 2):
            done = wait_for(lambda s=step: _finished(client, "tiny", s), timeout=120, what=f"step {step}")
            assert done["status"] == "ready", done
        status = wait_for(lambda: (s := client.get("/v1/runs/tiny/status").json())["forecast"] and
                          s["forecast"]["step"] == 2 and s, timeout=60, what="assessment of step 2")
    finally:
        stop(worker)
    # No probe sets: no forecast and no detection, with the reason; the probe-free parameter heuristic
    # answers beside them, labelled as such.
    assert not status["forecast"]["applicable"] and status["forecast"]["probability"] is None
    assert status["forecast"]["reason_code"] == "no_ood_probes"
    assert not status["detection"]["measured"] and not status["detection"]["detected"]
    heuristic = status["parameter_heuristic"]
    assert heuristic["applicable"] and 0 <= heuristic["value"] <= 1 and heuristic["model"] == "heuristic"
    assert "probe-free parameter heuristic" in heuristic["label"]
    metrics = client.get("/metrics").text
    assert 'forgetwatch_forecast_applicable{method="sft",reason="no_ood_probes",run="tiny"} 0.0' in metrics
    assert "forgetwatch_forgetting_forecast_probability{" not in metrics
    assert 'forgetwatch_param_relative_l2{block="global",method="sft",run="tiny"}' in metrics
    assert 'forgetwatch_last_checkpoint_step{method="sft",run="tiny"} 2.0' in metrics
    drift = client.get("/v1/runs/tiny/checkpoints/2/param-drift", params={"tensors": "true"}).json()
    assert drift["status"] == "ready"
    assert [b["block"] for b in drift["blocks"]] == [0, 1]
    assert {m["module"] for m in drift["modules"]} >= {"attention", "mlp", "embedding", "norm"}
    assert 0 < drift["global"]["relative_l2_distance"] < 1
    assert drift["global"]["update_cosine_similarity"] is not None  # base -> 1 -> 2 gives two updates
    assert any(t["name"] == "transformer.h.1.attn.c_attn.weight" and t["block"] == 1 for t in drift["tensors"])
    series = client.get("/v1/runs/tiny/param-drift").json()
    assert [g["step"] for g in series["global"]] == [1, 2]
    assert series["global"][1]["relative_l2_distance"] > series["global"][0]["relative_l2_distance"]
    assert set(series["blocks"]) == {"0", "1"}


def test_two_workers_on_a_sharded_checkpoint_match_one_worker(client: TestClient, settings, engine,
                                                              checkpoint_root: Path, tmp_path: Path) -> None:
    paths = _register_tiny_run(client, checkpoint_root, steps=1)
    assert len(list(paths[1].glob("*.safetensors"))) > 2  # really sharded
    env = worker_env(settings)
    workers = [start(["worker", "--concurrency", "1"], env, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        wait_for(lambda: _finished(client, "tiny", 1), timeout=120, what="two-worker result")
    finally:
        for worker in workers:
            stop(worker)
    with engine.connect() as conn:
        parts = conn.execute(text("SELECT count(*) FROM param_drift_parts")).scalar()
        workers_used = conn.execute(text(
            "SELECT count(DISTINCT e.id) FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id "
            "WHERE j.task_name LIKE '%param_drift_part' AND e.type = 'started'")).scalar()
    assert parts > 1 and workers_used == parts
    two = client.get("/v1/runs/tiny/checkpoints/1/param-drift", params={"tensors": "true"}).json()

    from drift.params import compare
    single = compare(paths[0], paths[1], spectral=True).summary
    assert abs(two["global"]["relative_l2_distance"] - single.overall.relative_l2_distance) < 1e-12
    assert abs(two["global"]["normalized_spectral_shift"] - single.overall.normalized_spectral_shift) < 1e-9
    assert len(two["tensors"]) == len({t["name"] for t in two["tensors"]})


def test_bad_checkpoint_fails_with_a_readable_message(client: TestClient, settings, checkpoint_root: Path,
                                                       tmp_path: Path) -> None:
    paths = save_tiny_gpt2_run(checkpoint_root, steps=1, max_shard_size="10GB")
    shard = paths[1] / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    client.post("/v1/runs", json={"name": "tiny", "base_model": str(paths[0])})
    client.post("/v1/runs/tiny/checkpoints", json={"step": 1, "uri": str(paths[1])})
    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        # The analysis is marked failed inside the job; procrastinate records the job's end just after.
        failed = wait_for(lambda: _job_ended(_finished(client, "tiny", 1)), timeout=60, what="checkpoint failed")
    finally:
        stop(worker)
    assert failed["status"] == "failed"
    assert "model.safetensors" in failed["error"]
    assert failed["jobs"][0]["attempts"] == 1  # a bad file is not retried


def test_killed_worker_job_is_completed_once_by_another(client: TestClient, settings, engine,
                                                        checkpoint_root: Path, tmp_path: Path) -> None:
    # Zero-filled sparse checkpoints big enough that the worker is still reading when killed.
    for name in ("base", "step-1"):
        (checkpoint_root / name).mkdir()
        write_sparse_safetensors(checkpoint_root / name / "model.safetensors", 2**30, dtype="F32")
    client.post("/v1/runs", json={"name": "big", "base_model": str(checkpoint_root / "base")})
    client.post("/v1/runs/big/checkpoints", json={"step": 1, "uri": str(checkpoint_root / "step-1")})
    env = {**worker_env(settings), "FORGETWATCH_SPECTRAL": "false"}
    first = start(["worker"], env, tmp_path / "worker1.log")

    def part_running():
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing' "
                                     "AND task_name LIKE '%param_drift_part'")).scalar()
    try:
        wait_for(part_running, timeout=60, what="part job started")
    finally:
        stop(first, signal.SIGKILL)
    second = start(["worker"], env, tmp_path / "worker2.log")
    try:
        done = wait_for(lambda: _finished(client, "big", 1), timeout=240, interval=1, what="recovered job finished")
    finally:
        stop(second)
    assert done["status"] == "ready", done
    with engine.connect() as conn:
        events = conn.execute(text(
            "SELECT j.task_name, e.type::text FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id "
            "WHERE j.task_name LIKE '%param_drift_part'")).all()
        rows = conn.execute(text("SELECT count(*), count(DISTINCT name) FROM param_drift_tensors")).one()
    assert [t for _, t in events].count("succeeded") == 1
    assert [t for _, t in events].count("started") == 2
    assert rows[0] == rows[1] == 1


def test_registering_a_run_prepares_its_base_for_the_spectral_pass(client: TestClient, settings,
                                                                   checkpoint_root: Path, tmp_path: Path) -> None:
    paths = save_tiny_gpt2_run(checkpoint_root, steps=1)
    assert client.post("/v1/runs", json={"name": "early", "base_model": str(paths[0]), "method": "sft"}).status_code == 201
    cache = settings.cache_dir / "spectral"
    matrices = [t for t in list_tensors(paths[0]) if len(t.shape) == 2 and not t.alias_of]
    # parts of about a third of the matrices' elements: the preparation runs as several jobs
    part_elements = sum(t.numel for t in matrices) // 3
    parts = spectral_base_parts(paths[0], settings.model_copy(update={"param_part_elements": part_elements}))
    assert len(parts) >= 3 and sorted(n for p in parts for n in p) == sorted(t.name for t in matrices)
    env = {**worker_env(settings), "FORGETWATCH_PARAM_PART_ELEMENTS": str(part_elements)}
    worker = start(["worker"], env, tmp_path / "worker.log")
    try:
        jobs = wait_for(lambda: (js := client.get("/v1/jobs", params={"run": "early", "kind": "prepare_spectral_base"}).json())
                        and all(j["status"] == "succeeded" for j in js) and len(js) == len(parts) and js,
                        timeout=120, what="the base's spectral preparation, in parts")
        prepared = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")}
        assert len(prepared) == len(matrices) > 0  # before any checkpoint was registered
        assert len(jobs) == len(parts)
        assert client.post("/v1/runs/early/checkpoints", json={"step": 1, "uri": str(paths[1])}).status_code == 202
        done = wait_for(lambda: _finished(client, "early", 1), timeout=120, what="step 1")
    finally:
        stop(worker)
    assert done["status"] == "ready", done
    drift = client.get("/v1/runs/early/checkpoints/1/param-drift").json()
    assert drift["global"]["normalized_spectral_shift"] > 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")} == prepared  # read, not recomputed
