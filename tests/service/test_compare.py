"""`GET /v1/compare` on runs registered through the API; the probe results the workers would store are
written into their table here (the real pipeline runs in tests/integration/test_compare_pipeline.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

ITEMS = [{"prompt": "1+1=", "reference": "2", "answer": "2"}]
HALF = 0.05  # half-width of every stored interval
# run -> method, tags, {step: (in-domain accuracy change, ood accuracy change)}
RUNS: dict[str, tuple[str, dict[str, Any], dict[int, tuple[float, float]]]] = {
    "sft-a": ("sft", {"lr": "1e-5", "seed": 0}, {100: (0.2, -0.1), 200: (0.4, -0.3)}),
    "grpo-b": ("grpo", {"lr": "1e-5", "seed": 0}, {100: (0.1, 0.0), 200: (0.3, -0.05)}),
    "sd-c": ("self_distillation", {"lr": "3e-5", "teacher": "ema"}, {100: (0.1, -0.2)}),
}


def store_results(engine: Engine, run_id: int, step: int, results: dict[str, tuple[float, float]]) -> None:
    """What the probe job stores for one checkpoint: per probe set (accuracy change, accuracy)."""
    with engine.begin() as conn:
        cid = conn.execute(
            text(
                "INSERT INTO checkpoints (run_id, step, uri, status) VALUES (:r, :s, '/x', 'ready') "
                "RETURNING id"
            ),
            {"r": run_id, "s": step},
        ).scalar_one()
        for name, (change, accuracy) in results.items():
            conn.execute(
                text(
                    "INSERT INTO probe_drift (checkpoint_id, probe_set_id, domain, kl_forward, accuracy, accuracy_base, "
                    "accuracy_change, accuracy_ci_low, accuracy_ci_high, data) SELECT :c, id, domain, :kl, :acc, "
                    ":base, :ch, :lo, :hi, '{}' FROM probe_sets WHERE name = :n"
                ),
                {
                    "c": cid,
                    "n": name,
                    "kl": step / 1000,
                    "acc": accuracy,
                    "base": accuracy - change,
                    "ch": change,
                    "lo": change - HALF,
                    "hi": change + HALF,
                },
            )


def seed_runs(client: TestClient, engine: Engine, base_model: str) -> dict[str, int]:
    """RUNS registered through the API with two probe sets and their stored results; their ids."""
    for name, domain in (("task", "in_domain"), ("old", "ood")):
        assert (
            client.post("/v1/probe-sets", json={"name": name, "domain": domain, "items": ITEMS}).status_code
            == 201
        )
    ids = {}
    for name, (method, tags, steps) in RUNS.items():
        made = client.post(
            "/v1/runs",
            json={
                "name": name,
                "base_model": base_model,
                "method": method,
                "tags": tags,
                "probe_sets": ["task", "old"],
            },
        )
        assert made.status_code == 201, made.text
        ids[name] = made.json()["id"]
        for step, (gain, ood) in steps.items():
            store_results(engine, ids[name], step, {"task": (gain, 0.3 + gain), "old": (ood, 0.9 + ood)})
    return ids


@pytest.fixture
def runs(client: TestClient, engine: Engine, base_model: str) -> dict[str, int]:
    return seed_runs(client, engine, base_model)


def test_pareto_view_at_matched_step_and_matched_gain(client: TestClient, runs: dict[str, int]) -> None:
    body = client.get("/v1/compare", params={"runs": "sft-a,grpo-b,sd-c"}).json()
    assert [r["name"] for r in body["runs"]] == ["sft-a", "grpo-b", "sd-c"]
    # defaults: the last step all three reached (100), the largest gain all three reached (0.1)
    assert body["matched_step"] == 100 and body["matched_gain"] == pytest.approx(0.1)
    a, b, c = body["runs"]
    assert a["gain_metric"] == "accuracy" and a["loss_metric"] == "accuracy"
    assert [p["step"] for p in a["points"]] == [0, 100, 200]  # the base first
    assert (a["at_step"]["gain"], a["at_step"]["loss"]) == pytest.approx((0.2, 0.1))
    assert (a["at_step"]["loss_low"], a["at_step"]["loss_high"]) == pytest.approx((0.05, 0.15))
    # sft-a reaches gain 0.1 half way from the base to step 100: its loss and interval blend the same way
    at = a["at_gain"]
    assert (at["step"], at["loss"], at["loss_low"], at["loss_high"]) == pytest.approx(
        (50, 0.05, 0.025, 0.075)
    )
    assert (b["at_gain"]["step"], b["at_gain"]["loss"]) == pytest.approx((100, 0.0))
    assert (c["at_gain"]["step"], c["at_gain"]["loss"]) == pytest.approx((100, 0.2))
    # at step 100 grpo-b (0.1, 0.0) dominates sd-c (0.1, 0.2); sft-a gains more
    assert body["pareto_at_step"] == ["sft-a", "grpo-b"]
    assert body["pareto_latest"] == ["sft-a", "grpo-b"]
    assert a["overlays"]["accuracy_in_domain"] == [[100, pytest.approx(0.5)], [200, pytest.approx(0.7)]]
    assert a["overlays"]["kl_forward_ood"] == [[100, pytest.approx(0.1)], [200, pytest.approx(0.2)]]
    assert a["overlays"]["risk"] == []  # nothing assessed


def test_explicit_step_and_gain_interpolate_and_runs_that_never_reach_them_say_so(
    client: TestClient, runs: dict[str, int]
) -> None:
    body = client.get("/v1/compare", params={"runs": "sft-a,sd-c", "step": 150, "gain": 0.35}).json()
    a, c = body["runs"]
    assert (a["at_step"]["gain"], a["at_step"]["loss"]) == pytest.approx((0.3, 0.2))
    assert (a["at_gain"]["step"], a["at_gain"]["loss"]) == pytest.approx((175, 0.25))
    assert c["at_step"] is None and c["at_gain"] is None
    assert body["pareto_at_step"] == ["sft-a"]


def test_runs_selected_by_tag_or_method(client: TestClient, runs: dict[str, int]) -> None:
    names = lambda **p: [r["name"] for r in client.get("/v1/compare", params=p).json()["runs"]]
    assert names(tag="method:grpo") == ["grpo-b"]
    assert names(tag=["lr=1e-5", "seed:0"]) == ["sft-a", "grpo-b"]
    assert names(tag="teacher:ema") == ["sd-c"]
    assert names() == ["sft-a", "grpo-b", "sd-c"]


def test_bad_selections_are_clear_4xx(client: TestClient, runs: dict[str, int]) -> None:
    missing = client.get("/v1/compare", params={"runs": "sft-a,nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert client.get("/v1/compare", params={"runs": "a,,b"}).status_code == 422
    assert client.get("/v1/compare", params={"tag": "no-separator"}).status_code == 422
    assert client.get("/v1/compare", params={"runs": "sft-a", "step": "nan"}).status_code == 422


def test_a_run_without_probe_results_has_no_points_and_says_why(client: TestClient, base_model: str) -> None:
    client.post("/v1/runs", json={"name": "bare", "base_model": base_model})
    (run,) = client.get("/v1/compare", params={"runs": "bare"}).json()["runs"]
    assert run["points"] == [] and run["at_step"] is None and "probe" in run["reason"]
    assert not run["entropy_ceiling"]["applicable"] and "entropy" in run["entropy_ceiling"]["reason"]


def test_entropy_ceiling_from_posted_entropy_and_measured_accuracy(
    client: TestClient, engine: Engine, runs: dict[str, int], base_model: str
) -> None:
    made = client.post(
        "/v1/runs",
        json={"name": "grpo-h", "base_model": base_model, "method": "grpo", "probe_sets": ["task", "old"]},
    ).json()
    entropy = {100: 1.0, 200: 0.8, 300: 0.5, 400: 0.3}
    for step, h in entropy.items():
        accuracy = -0.2 * math.exp(h) + 0.9
        store_results(engine, made["id"], step, {"task": (accuracy - 0.3, accuracy), "old": (0.0, 0.9)})
    # the trainer logs entropy more often than it saves, out of order; NaN is refused with a reason
    points = [{"step": s - 10, "values": {"entropy": 5.0}} for s in entropy]  # superseded by the later values
    points += [{"step": s, "values": {"entropy": h}} for s, h in reversed(entropy.items())]
    nan = client.post(
        "/v1/runs/grpo-h/metrics",
        content='{"points": [{"step": 1, "values": {"entropy": NaN}}]}',
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code == 422 and "entropy" in nan.text
    first = client.post("/v1/runs/grpo-h/metrics", json={"points": points[4:7]})  # 400, 300, 200
    assert first.status_code == 202
    ceiling = client.get("/v1/compare", params={"runs": "grpo-h"}).json()["runs"][0]["entropy_ceiling"]
    assert not ceiling["applicable"] and "needs at least 4" in ceiling["reason"]
    client.post("/v1/runs/grpo-h/metrics", json={"points": points[:4] + points[7:]})
    body = client.get("/v1/compare", params={"runs": "grpo-h", "metric": "entropy"}).json()
    ceiling = body["runs"][0]["entropy_ceiling"]
    assert ceiling["applicable"] and ceiling["n_points"] == 4
    assert (ceiling["a"], ceiling["b"], ceiling["ceiling"]) == pytest.approx((0.2, 0.9, 0.7))
    assert body["runs"][0]["overlays"]["metric:entropy"][-1] == [400, 0.3]


def test_tags_are_patched_and_select_the_runs_compared(client: TestClient, runs: dict[str, int]) -> None:
    patched = client.patch(
        "/v1/runs/sd-c", json={"tags": {"teacher": "frozen", "lr": "1e-5"}, "remove_tags": ["x"]}
    )
    assert patched.status_code == 200 and patched.json()["tags"] == {"lr": "1e-5", "teacher": "frozen"}
    assert client.patch("/v1/runs/sd-c", json={"remove_tags": ["teacher"]}).json()["tags"] == {"lr": "1e-5"}
    names = [r["name"] for r in client.get("/v1/compare", params={"tag": "lr:1e-5"}).json()["runs"]]
    assert names == ["sft-a", "grpo-b", "sd-c"]
    refused = client.patch("/v1/runs/sd-c", json={"tags": {"lr": "x\u0000"}})
    assert refused.status_code == 422
    assert client.patch("/v1/runs/nope", json={"tags": {}}).status_code == 404
