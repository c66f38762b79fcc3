"""The HTML pages against a migrated database filled with a realistic run, through TestClient and
through a real headless Chromium talking to a real uvicorn server."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from drift.forecast import theil_sen_forecast
from service.api.app import create_app
from service.settings import Settings
from tests.web.browser import assert_readable_png, console_errors, screenshot

RUN = "qwen2.5-0.5b/grpo+kl@lr3e-6"
# Inserted straight into the table (the API would refuse it), to prove that names are escaped.
NASTY = "<img src=x onerror=alert(1)>&\"run\""
STEPS = list(range(0, 1300, 100))  # 0 .. 1200 assessed; 1300 registered, still processing
BLOCKS = 12
THRESHOLD = 0.5
FINDINGS = [
    {"code": "diversity_drop", "severity": "warning", "step": 1200, "value": 0.41,
     "message": "distinct-2 of samples down 41% vs the base model"},
    {"code": "ood_accuracy_drop", "severity": "critical", "step": 1200, "value": 0.27,
     "message": "ood accuracy down 27% vs base (general-qa) <b>since step 600</b>"},
    {"code": "ood_kl_rising", "severity": "warning", "step": 1200, "value": 3.1,
     "message": "ood forward KL ×3.1 over the last 4 checkpoints"},
]


# --- data --------------------------------------------------------------------------------------

def _risk(step: int) -> float:
    return 1 / (1 + math.exp(-(step - 950) / 110))


def _rel_l2(step: int) -> float:
    return 0.004 + 0.03 * (step / 1200) ** 1.6


def _kl_ood(step: int) -> float:
    return 0.01 + 0.25 * (step / 1200) ** 2 + (0.12 if step >= 900 else 0.0)


def _acc_change_ood(step: int) -> float:
    return -0.2 * (step / 1200) ** 1.5


def _distinct2(step: int) -> float:
    return 0.73 - 0.25 * (step / 1200) ** 1.3


def forecasts() -> dict[str, Any]:
    """What the risk task stores as trends for the latest checkpoint: Theil–Sen over the last 6."""
    window = STEPS[-6:]
    series = {"ood_kl": (_kl_ood, 0.5, "up"), "param_drift": (_rel_l2, 0.05, "up"),
              "diversity": (_distinct2, 0.6 * 0.74, "down")}
    out: dict[str, Any] = {}
    for name, (f, threshold, direction) in series.items():
        fit = theil_sen_forecast(window, [f(s) for s in window], threshold=threshold, direction=direction)
        out[name] = {"threshold": threshold, **dataclasses.asdict(fit)}
    return {**out, "acceleration_ratio": 2.4}


def seed(engine: Engine) -> dict[str, int]:
    """Two runs: RUN with every analysis for 13 checkpoints, NASTY with checkpoints only."""
    with engine.begin() as conn:
        def one(sql: str, **params: Any) -> Any:
            return conn.execute(text(sql), params).scalar_one()

        run = one("INSERT INTO runs (name, base_model, method) VALUES (:n, '/models/qwen2.5-0.5b', 'grpo') "
                  "RETURNING id", n=RUN)
        other = one("INSERT INTO runs (name, base_model, method) VALUES (:n, '/models/base', 'sft') RETURNING id",
                    n=NASTY)
        sets = {name: one("INSERT INTO probe_sets (name, domain) VALUES (:n, :d) RETURNING id", n=name, d=domain)
                for name, domain in (("general-qa", "ood"), ("wiki-ref", "ood"), ("task-math", "in_domain"))}
        for step in STEPS + [1300]:
            cid = one("INSERT INTO checkpoints (run_id, step, uri, status) VALUES (:r, :s, :u, :st) RETURNING id",
                      r=run, s=step, u=f"/ckpt/{step}", st="processing" if step == 1300 else "ready")
            if step == 1300:
                continue
            t = step / 1200
            rel = _rel_l2(step)
            conn.execute(text(
                "INSERT INTO param_drift_summaries (checkpoint_id, scope, key, numel, relative_l2_distance, "
                "normalized_spectral_shift, cosine_similarity, data) VALUES (:c, :scope, :k, :n, :rel, :nss, :cos, "
                "'{}')"),
                [{"c": cid, "scope": "global", "k": "global", "n": 494_000_000, "rel": rel, "nss": 0.5 * rel,
                  "cos": 1 - rel ** 2 / 2}]
                + [{"c": cid, "scope": "block", "k": str(b), "n": 14_000_000, "rel": rel * (0.5 + b / BLOCKS),
                    "nss": None, "cos": None} for b in range(BLOCKS)])
            kl_ood = _kl_ood(step)
            rows = [
                {"set": "general-qa", "d": "ood", "kl": kl_ood, "acc": _acc_change_ood(step), "ll": None},
                {"set": "wiki-ref", "d": "ood", "kl": 0.8 * kl_ood, "acc": None, "ll": -0.35 * t ** 2},
                {"set": "task-math", "d": "in_domain", "kl": 0.02 + 0.06 * t, "acc": 0.12 * t, "ll": None},
            ]
            conn.execute(text(
                "INSERT INTO probe_drift (checkpoint_id, probe_set_id, domain, kl_forward, kl_forward_p10, "
                "kl_forward_p90, accuracy_base, accuracy_change, loglik_base, loglik_change, data) "
                "VALUES (:c, :p, :d, :kl, :p10, :p90, :ab, :acc, :lb, :ll, '{}')"),
                [{"c": cid, "p": sets[r["set"]], "d": r["d"], "kl": r["kl"], "p10": 0.3 * r["kl"],
                  "p90": 2.2 * r["kl"], "ab": 0.62 if r["acc"] is not None else None, "acc": r["acc"],
                  "lb": -2.1 if r["ll"] is not None else None, "ll": r["ll"]} for r in rows])
            conn.execute(text(
                "INSERT INTO sample_drift (run_id, step, probe_set, n_samples, distinct2, distinct2_base, "
                "repetition_ratio, data) VALUES (:r, :s, 'general-qa', 64, :d2, 0.74, :rep, '{}')"),
                {"r": run, "s": step, "d2": _distinct2(step), "rep": 0.04 + 0.25 * t ** 2})
            # The forecast applies from the third checkpoint until forgetting is detected (at 1200).
            detected = step == 1200
            applicable = 200 <= step < 1200
            drop = -_acc_change_ood(step) / 0.62
            conn.execute(text(
                "INSERT INTO risk_estimates (checkpoint_id, applicable, value, model, reason, reason_code, "
                "changepoint, features, forecasts, findings, detected, detection) VALUES (:c, :a, :v, 'trend/1', "
                ":why, :code, :cp, '{}', CAST(:f AS jsonb), CAST(:fi AS jsonb), :det, CAST(:d AS jsonb))"),
                {"c": cid, "a": applicable, "v": _risk(step) if applicable else None,
                 "why": None if applicable else "too few measured checkpoints for a trend" if step < 200
                 else "forgetting is already detected: a measurement, not a forecast",
                 "code": None if applicable else "too_few_checkpoints" if step < 200 else "detected",
                 "cp": step == 900, "f": json.dumps(forecasts() if step == 1200 else {}),
                 "fi": json.dumps(FINDINGS if step == 1200 else []), "det": detected,
                 "d": json.dumps({"measured": True, "detected": detected, "threshold": 0.1, "probe_set": "general-qa",
                                  "metric": "accuracy", "drop": drop, "drop_low": drop - 0.05,
                                  "drop_high": drop + 0.05, "n_items": 64})})
            if step % 300 == 0:
                conn.execute(text("INSERT INTO run_labels (run_id, step, name, value) VALUES "
                                  "(:r, :s, 'ood_accuracy', :o), (:r, :s, 'in_domain_accuracy', :i)"),
                             {"r": run, "s": step, "o": 0.62 - 0.14 * t ** 1.5, "i": 0.41 + 0.12 * t})
        for step in (0, 100):
            conn.execute(text("INSERT INTO checkpoints (run_id, step, uri, status) VALUES (:r, :s, '/x', 'pending')"),
                         {"r": other, "s": step})
    return {"run": run, "other": other}


# --- fixtures ----------------------------------------------------------------------------------

def build_app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings=settings, engine=engine)


@pytest.fixture
def ids(engine: Engine) -> dict[str, int]:
    return seed(engine)


@pytest.fixture
def web(settings: Settings, engine: Engine, ids: dict[str, int]) -> Iterator[TestClient]:
    """A client without a token: pages are public by default."""
    with TestClient(build_app(settings, engine)) as client:
        yield client


def page_numbers(body: str) -> dict[str, str]:
    return dict(re.findall(r'data-metric="([^"]+)" data-value="([^"]*)"', body))


def run_url(name: str) -> str:
    return "/runs/" + quote(name, safe="")


# --- through TestClient ------------------------------------------------------------------------

def test_run_list_shows_each_run_with_forgetting_findings_and_checkpoint_counts(web: TestClient) -> None:
    response = web.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    body = response.text
    assert f'href="{html.escape(run_url(RUN))}"' in body
    assert html.escape(NASTY) in body and NASTY not in body
    assert "grpo" in body and "sft" in body
    assert "13 ready · 1 processing" in body and "2 pending" in body
    assert html.escape(FINDINGS[1]["message"]) in body  # critical first
    assert "<b>since step 600</b>" not in body
    assert "not assessed yet" in body  # the run without analyses
    assert ">detected<" in body  # the latest checkpoint's statement is the measured one


def test_run_page_leads_with_detection_forecast_rollback_and_findings_then_plots(web: TestClient) -> None:
    response = web.get(run_url(RUN))
    assert response.status_code == 200
    body = response.text
    assert html.escape(RUN) in body
    order = [body.index(marker) for marker in ("id='detection-card'", "id='risk-card'", "id='rollback-card'",
                                               "Findings at step 1,200",
                                               "id='plot-risk'", 'id="latest"')]
    assert order == sorted(order)
    for finding in FINDINGS:
        assert html.escape(finding["message"]) in body
    assert "<b>since step 600</b>" not in body
    assert body.index("ood accuracy down") < body.index("distinct-2 of samples down")  # critical first
    for plot in ("risk", "forecasts", "param-drift", "block-heatmap", "probe-kl", "forgetting", "diversity"):
        section = re.search(rf"<section class='plot[^']*' id='plot-{plot}' data-empty='(\w+)'>(.*?)</section>",
                            body, re.DOTALL)
        assert section is not None, plot
        assert section.group(1) == "false" and section.group(2).startswith("<svg"), plot
    assert f"threshold in <b>~{round(forecasts()['ood_kl']['steps_to_threshold']):,}</b> steps" in body
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", body)  # nothing fetched from elsewhere
    assert "<script" not in body
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_numbers_on_the_run_page_equal_the_api(web: TestClient, tokens: dict[str, str], ids: dict[str, int],
                                               settings: Settings) -> None:
    numbers = page_numbers(web.get(run_url(RUN)).text)
    auth = {"Authorization": f"Bearer {tokens['read']}"}
    status = web.get(f"/v1/runs/{ids['run']}/status", headers=auth).json()
    drift = web.get(f"/v1/runs/{ids['run']}/param-drift", headers=auth).json()
    assert status["detection"]["step"] == 1200 and status["last_step"] == 1300
    assert status["detection"]["detected"] and status["forecast"]["reason_code"] == "detected"
    assert float(numbers["detection.drop_low"]) == status["detection"]["drop_low"]
    # Forecasts 1/(1 + e^{-(step − 950)/110}) against the default threshold 0.69: first at or above at 1100.
    assert settings.forecast_alarm_probability == 0.69
    assert status["first_predicted_step"] == 1100 and status["first_detected_step"] == 1200
    assert int(numbers["last_safe_step"]) == status["last_safe_step"] == 1000
    latest = drift["global"][-1]
    assert float(numbers["param.global.relative_l2_distance"]) == latest["relative_l2_distance"]
    assert float(numbers["param.global.normalized_spectral_shift"]) == latest["normalized_spectral_shift"]
    top = max(drift["blocks"].values(), key=lambda s: s[-1]["relative_l2_distance"])[-1]
    assert float(numbers["param.max_block.relative_l2_distance"]) == top["relative_l2_distance"]
    assert float(numbers["label.ood_accuracy"]) == pytest.approx(0.62 - 0.14)
    assert float(numbers["samples.distinct2_base"]) == 0.74


def test_run_without_results_shows_no_data_notes(web: TestClient) -> None:
    response = web.get(run_url(NASTY))
    assert response.status_code == 200
    body = response.text
    assert html.escape(NASTY) in body and NASTY not in body
    assert body.count("data-empty='true'") == 8 and "<svg" not in body
    assert "not assessed yet" in body and "No parameter drift yet" in body


def test_unknown_run_is_a_404_page(web: TestClient) -> None:
    response = web.get("/runs/no-such-run%3Cx%3E")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "No run &#x27;no-such-run&lt;x&gt;&#x27;" in response.text


def test_pages_need_a_read_token_when_public_pages_is_off(settings: Settings, engine: Engine,
                                                           tokens: dict[str, str], ids: dict[str, int]) -> None:
    private = settings.model_copy(update={"public_pages": False})
    with TestClient(build_app(private, engine)) as client:
        for path in ("/", run_url(RUN)):
            denied = client.get(path)
            assert denied.status_code == 401 and "FORGETWATCH_PUBLIC_PAGES" in denied.text
            assert RUN not in denied.text
            allowed = client.get(path, headers={"Authorization": f"Bearer {tokens['read']}"})
            assert allowed.status_code == 200


# --- in a real browser -------------------------------------------------------------------------

@pytest.fixture
def live_server(settings: Settings, engine: Engine, ids: dict[str, int]) -> Iterator[tuple[str, list]]:
    """uvicorn on a free loopback port in a thread; yields the base URL and every (path, status)."""
    app = build_app(settings, engine)
    served: list[tuple[str, int]] = []

    async def recording(scope: dict, receive: Any, send: Any) -> None:
        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                served.append((scope["path"], message["status"]))
            await send(message)
        await app(scope, receive, send_status if scope["type"] == "http" else send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(recording, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", served
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_pages_render_in_headless_chromium_without_console_errors(live_server: tuple[str, list],
                                                                  tmp_path: Path) -> None:
    base, served = live_server
    for name, path in (("index", "/"), ("run", run_url(RUN)), ("empty-run", run_url(NASTY))):
        shot = tmp_path / f"{name}.png"
        log = screenshot(base + path, shot, tmp_path / f"profile-{name}")
        console = console_errors(log)
        assert not console, "\n".join(console)
        assert_readable_png(shot)
    # Only the three pages were requested (no favicon, fonts or scripts), and all were served.
    assert sorted(served) == sorted([("/", 200), (f"/runs/{RUN}", 200), (f"/runs/{NASTY}", 200)])
