"""Detected and predicted forgetting through the real database, the risk task's assessment, `/status`,
the run page and `/metrics`; abstention ("not applicable: …") for every input it cannot judge."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from service.db.session import make_sessionmaker
from service.queue import sample_tasks
from service.queue.defer import task_name
from service.queue.risk_tasks import assess_checkpoint
from service.settings import Settings

STEPS = (100, 200, 300, 400, 500, 600)


def _probe_set(client: TestClient, name: str, n_items: int, domain: str = "ood") -> None:
    items = [{"prompt": f"{i}+1=", "reference": str(i + 1), "answer": str(i + 1)} for i in range(n_items)]
    response = client.post("/v1/probe-sets", json={"name": name, "domain": domain, "items": items})
    assert response.status_code in (200, 201), response.text


def _run(client: TestClient, base_model: str, name: str, probe_sets: list[str]) -> None:
    response = client.post("/v1/runs", json={"name": name, "base_model": base_model, "method": "sft",
                                             "probe_sets": probe_sets})
    assert response.status_code in (200, 201), response.text


def _checkpoint(engine: Engine, run: str, step: int) -> int:
    with engine.begin() as conn:
        return conn.execute(text("INSERT INTO checkpoints (run_id, step, uri, status) SELECT id, :s, '/x', 'ready' "
                                 "FROM runs WHERE name = :r RETURNING id"), {"r": run, "s": step}).scalar_one()


def _probe_result(engine: Engine, checkpoint_id: int, probe_set: str, *, accuracy_base: float, change: float,
                  half_width: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO probe_drift (checkpoint_id, probe_set_id, domain, kl_forward, accuracy_base, "
                 "accuracy_change, accuracy_ci_low, accuracy_ci_high, data) SELECT :c, id, domain, :kl, :b, :d, "
                 ":lo, :hi, '{}' FROM probe_sets WHERE name = :p"),
            {"c": checkpoint_id, "p": probe_set, "kl": abs(change), "b": accuracy_base, "d": change,
             "lo": change - half_width, "hi": change + half_width})


def _assess(engine: Engine, settings: Settings, checkpoint_id: int) -> None:
    assess_checkpoint(make_sessionmaker(engine), settings, checkpoint_id)


def _series(engine: Engine, settings: Settings, run: str, probe_set: str, changes: list[float],
            half_width: float = 0.02) -> list[int]:
    ids = []
    for step, change in zip(STEPS, changes):
        cid = _checkpoint(engine, run, step)
        _probe_result(engine, cid, probe_set, accuracy_base=0.8, change=change, half_width=half_width)
        _assess(engine, settings, cid)
        ids.append(cid)
    return ids


def _metrics(client: TestClient) -> dict[str, list]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {f.name: f.samples for f in families}


def _samples(metrics: dict[str, list], name: str, run: str) -> list:
    return [s for s in metrics.get(name, []) if s.labels.get("run") == run]


def test_a_run_that_has_not_moved_is_forecast_and_never_alarms(client: TestClient, base_model: str, engine: Engine,
                                                                settings: Settings) -> None:
    _probe_set(client, "arith", 64)
    _run(client, base_model, "still", ["arith"])
    _series(engine, settings, "still", "arith", [0.0] * 6, half_width=0.0)
    status = client.get("/v1/runs/still/status").json()
    assert status["forecast"]["applicable"] and status["forecast"]["probability"] < 0.05
    assert not status["forecast"]["predicted"] and not status["detection"]["detected"]
    assert status["first_predicted_step"] is None and status["first_detected_step"] is None
    assert status["last_safe_step"] == STEPS[-1]
    metrics = _metrics(client)
    assert _samples(metrics, "forgetwatch_forecast_applicable", "still")[0].value == 1.0
    assert _samples(metrics, "forgetwatch_ood_forgetting_detected", "still")[0].value == 0.0


def test_forgetting_is_predicted_before_it_is_detected_and_then_only_detected(client: TestClient, base_model: str, engine: Engine,
                                                                              settings: Settings) -> None:
    _probe_set(client, "arith", 64)
    _run(client, base_model, "forgets", ["arith"])
    # Accuracy change vs a base of 0.8, interval ±0.02: relative drops 0, 0.025, 0.05, 0.075, 0.1, 0.15.
    _series(engine, settings, "forgets", "arith", [0.0, -0.02, -0.04, -0.06, -0.08, -0.12])
    status = client.get("/v1/runs/forgets/status").json()
    series = client.get("/v1/runs/forgets/risk").json()["series"]
    predicted = status["first_predicted_step"]
    detected = status["first_detected_step"]
    assert predicted is not None and detected is not None and predicted < detected, (predicted, detected)
    # Relative drop 0.15 with half-width 0.025: the interval [0.125, 0.175] lies past 10 %.
    assert detected == 600 and status["detection"]["detected"]
    assert status["detection"]["drop_low"] == pytest.approx(0.125)
    # Once detected, the forecast says so instead of predicting.
    assert status["forecast"]["probability"] is None and status["forecast"]["reason_code"] == "detected"
    threshold = settings.forecast_alarm_probability
    assert [r["step"] for r in series if r["value"] is not None and r["value"] >= threshold] == [
        s for s in STEPS if predicted <= s < detected]
    assert status["last_safe_step"] == max(s for s in STEPS if s < predicted)
    # Never from fewer than 3 checkpoints.
    assert all(r["value"] is None for r in series[:2])
    metrics = _metrics(client)
    assert not _samples(metrics, "forgetwatch_forgetting_forecast_probability", "forgets")
    assert _samples(metrics, "forgetwatch_ood_forgetting_detected", "forgets")[0].value == 1.0
    applicable = _samples(metrics, "forgetwatch_forecast_applicable", "forgets")
    assert [(s.labels["reason"], s.value) for s in applicable] == [("detected", 0.0)]
    findings = {(s.labels["code"], s.labels["severity"]) for s in _samples(metrics, "forgetwatch_finding_active", "forgets")}
    assert ("ood_accuracy_drop", "warning") in findings  # 15 % below the base: the warning level
    page = client.get("/runs/forgets").text
    assert "id='detection-card'" in page and ">detected<" in page


def test_a_forecast_uses_only_checkpoints_up_to_its_own(client: TestClient, base_model: str, engine: Engine,
                                                        settings: Settings) -> None:
    _probe_set(client, "arith", 64)
    _run(client, base_model, "past", ["arith"])
    ids = _series(engine, settings, "past", "arith", [0.0, -0.01, 0.0, -0.01])
    before = client.get("/v1/runs/past/risk").json()["series"][3]["value"]
    later = _checkpoint(engine, "past", 700)
    _probe_result(engine, later, "arith", accuracy_base=0.8, change=-0.5, half_width=0.02)
    _assess(engine, settings, ids[3])  # a re-assessment of step 400 after step 700 arrived
    after = client.get("/v1/runs/past/risk").json()["series"][3]["value"]
    assert before == after


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("no_ood", "no_ood_probes", "the run has no ood probe set"),
        ("tiny", "too_few_items", "too small"),
        ("nan", "non_finite", "NaN"),
        ("base_fails", "not_measured", "base model folder is missing"),
        ("zero_base", "base_unusable", "cannot anchor"),
    ],
)
def test_inputs_it_cannot_judge_give_not_applicable_everywhere_never_a_score(
        client: TestClient, base_model: str, engine: Engine, settings: Settings, case: str, code: str, words: str) -> None:
    _probe_set(client, "indomain", 64, domain="in_domain")
    _probe_set(client, "tiny", 3)
    _probe_set(client, "arith", 64)
    probe_sets = {"no_ood": ["indomain"], "tiny": ["tiny"]}.get(case, ["arith"])
    _run(client, base_model, case, probe_sets)
    for step in STEPS[:4]:
        cid = _checkpoint(engine, case, step)
        if case == "tiny":
            _probe_result(engine, cid, "tiny", accuracy_base=1.0, change=-0.5, half_width=0.3)
        elif case == "nan":
            _probe_result(engine, cid, "arith", accuracy_base=0.8, change=math.nan, half_width=0.02)
        elif case == "zero_base":
            _probe_result(engine, cid, "arith", accuracy_base=0.0, change=0.0, half_width=0.0)
        elif case == "base_fails":
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO checkpoint_analyses (checkpoint_id, kind, status, error) "
                                  "VALUES (:c, 'responses', 'failed', 'base model folder is missing: /models/base')"),
                             {"c": cid})
        _assess(engine, settings, cid)
    status = client.get(f"/v1/runs/{case}/status")
    assert status.status_code == 200
    body = status.json()
    forecast = body["forecast"]
    assert not forecast["applicable"] and forecast["probability"] is None and not forecast["predicted"]
    assert forecast["reason_code"] == code and words in forecast["reason"]
    assert not body["detection"]["detected"] and not body["detection"]["measured"]
    assert body["first_predicted_step"] is None and body["first_detected_step"] is None
    metrics = _metrics(client)
    assert not _samples(metrics, "forgetwatch_forgetting_forecast_probability", case)
    assert [(s.labels["reason"], s.value) for s in _samples(metrics, "forgetwatch_forecast_applicable", case)] == [
        (code, 0.0)]
    page = client.get(f"/runs/{case}")
    assert page.status_code == 200 and "not applicable: " in page.text


def test_a_coarse_probe_set_is_measured_but_never_forecast(client: TestClient, base_model: str, engine: Engine,
                                                           settings: Settings) -> None:
    _probe_set(client, "coarse", 16)
    _run(client, base_model, "coarse", ["coarse"])
    for step in STEPS[:4]:  # the answers never change; the base gets 8 of 16 right
        cid = _checkpoint(engine, "coarse", step)
        _probe_result(engine, cid, "coarse", accuracy_base=0.5, change=0.0, half_width=0.0)
        _assess(engine, settings, cid)
    body = client.get("/v1/runs/coarse/status").json()
    forecast = body["forecast"]
    assert not forecast["applicable"] and forecast["probability"] is None and not forecast["predicted"]
    assert forecast["reason_code"] == "too_coarse" and "items the base answers right" in forecast["reason"]
    assert body["detection"]["measured"] and not body["detection"]["detected"]
    assert body["first_predicted_step"] is None and body["first_detected_step"] is None
    metrics = _metrics(client)
    assert [(s.labels["reason"], s.value) for s in _samples(metrics, "forgetwatch_forecast_applicable", "coarse")] == [
        ("too_coarse", 0.0)]
    assert "not applicable: " in client.get("/runs/coarse").text


def test_the_forecast_is_the_same_whether_or_not_the_trainer_posts_the_base_as_step_0(
        client: TestClient, base_model: str, engine: Engine, settings: Settings) -> None:
    _probe_set(client, "arith", 64)
    changes = [0.0, -0.01, -0.02, -0.03]
    for run, with_base in (("plain", False), ("with-base", True)):
        _run(client, base_model, run, ["arith"])
        if with_base:
            cid = _checkpoint(engine, run, 0)
            _probe_result(engine, cid, "arith", accuracy_base=0.8, change=0.0, half_width=0.0)
            _assess(engine, settings, cid)
        _series(engine, settings, run, "arith", changes)
    plain = client.get("/v1/runs/plain/status").json()["forecast"]
    with_base = client.get("/v1/runs/with-base/status").json()
    assert plain["applicable"] and plain["probability"] == with_base["forecast"]["probability"]
    step0 = client.get("/v1/runs/with-base/risk").json()["series"][0]
    assert step0["step"] == 0 and step0["reason_code"] == "base_checkpoint" and step0["value"] is None


def test_reanalyze_queues_each_checkpoint_once_however_often_it_runs(client: TestClient, base_model: str, engine: Engine,
                                                                       settings: Settings) -> None:
    import subprocess

    from tests.conftest import worker_env
    from tests.integration.helpers import FORGETWATCH

    _probe_set(client, "arith", 64)
    _run(client, base_model, "again", ["arith"])
    for step in STEPS[:3]:
        _checkpoint(engine, "again", step)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM procrastinate_jobs"))  # what registering the run queued
    for _ in range(2):
        done = subprocess.run([FORGETWATCH, "reanalyze", "--run", "again"], env=worker_env(settings),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "3 checkpoint assessments of 1 run(s) queued" in done.stdout
    with engine.begin() as conn:
        jobs = conn.execute(text("SELECT task_name, count(*) FROM procrastinate_jobs WHERE status = 'todo' "
                                 "GROUP BY task_name ORDER BY task_name")).all()
    assert [(name.rsplit(":", 1)[1], n) for name, n in jobs] == [("compute_risk", 3), ("measure_base", 1)]
    with engine.begin() as conn:  # an analysis that failed runs again with --failed, once
        first = conn.execute(text("SELECT min(id) FROM checkpoints")).scalar()
        conn.execute(text("INSERT INTO checkpoint_analyses (checkpoint_id, kind, status, error) "
                          "VALUES (:c, 'responses', 'failed', 'x') ON CONFLICT (checkpoint_id, kind) "
                          "DO UPDATE SET status = 'failed'"), {"c": first})
    done = subprocess.run([FORGETWATCH, "reanalyze", "--run", "again", "--failed"], env=worker_env(settings),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "1 failed analyses queued again" in done.stdout, done.stderr
    with engine.begin() as conn:
        assert conn.execute(text("SELECT status FROM checkpoint_analyses WHERE checkpoint_id = :c AND "
                                 "kind = 'responses'"), {"c": first}).scalar() == "pending"
        assert conn.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND "
                                 "task_name LIKE '%probe_drift'")).scalar() == 1
    with engine.begin() as conn:  # a sample batch whose analysis failed is queued again, once however often
        run_id = conn.execute(text("SELECT id FROM runs WHERE name = 'again'")).scalar()
        conn.execute(text("INSERT INTO procrastinate_jobs (queue_name, task_name, args, status) "
                          "VALUES ('probes', :t, CAST(:a AS jsonb), 'failed')"),
                     {"t": task_name(sample_tasks.NAME), "a": json.dumps({"run_id": run_id, "step": 10, "probe_set": ""})})
    for _ in range(2):
        done = subprocess.run([FORGETWATCH, "reanalyze", "--run", "again", "--failed"], env=worker_env(settings),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and "1 failed analyses queued again" in done.stdout, done.stderr
    with engine.begin() as conn:
        queued = conn.execute(text("SELECT args FROM procrastinate_jobs WHERE status = 'todo' AND "
                                   "task_name LIKE '%sample_drift'")).scalars().all()
    assert queued == [{"run_id": run_id, "step": 10, "probe_set": ""}]
    missing = subprocess.run([FORGETWATCH, "reanalyze", "--run", "nope"], env=worker_env(settings),
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 1 and "forgetwatch reanalyze: no run 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_forecast_model_fitted_for_another_forgetting_threshold_abstains_and_says_what_to_do(
        client: TestClient, base_model: str, engine: Engine, settings: Settings) -> None:
    other = settings.model_copy(update={"forgetting_relative_drop": 0.2})
    assert other.forecast_model.threshold == 0.1
    _probe_set(client, "arith", 64)
    _run(client, base_model, "other-threshold", ["arith"])
    _series(engine, other, "other-threshold", "arith", [0.0, -0.01, -0.02, -0.03])
    forecast = client.get("/v1/runs/other-threshold/status").json()["forecast"]
    assert not forecast["applicable"] and forecast["probability"] is None
    assert forecast["reason_code"] == "uncalibrated" and "forgetwatch calibrate" in forecast["reason"]
