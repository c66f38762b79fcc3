"""Runs compared on what the workers measured: two runs of a tiny model registered through the API, their
checkpoints probed by a real worker, then `GET /v1/compare`, the status findings and the page."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import GPT2LMHeadModel

from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import char_tokenizer, tiny_gpt2

TASK = [{"prompt": f"{a}*{b}=", "reference": str(a * b)} for a in range(2, 4) for b in range(2, 4)]
OLD = [{"prompt": f"{a}+{b}=", "reference": str(a + b)} for a in range(2) for b in range(2)]
NOISE = {"small": 0.02, "large": 0.5}
DIVERGENCE = {"small": 0.4, "large": 0.004}
DIVERSE = ["the cat sat on a mat", "a dog ran far away", "birds sing at dawn", "rain falls on the roof"]


def _perturbed(base: Path, scale: float, seed: int, out: Path) -> Path:
    model = GPT2LMHeadModel.from_pretrained(base)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(out)
    return out


@pytest.mark.timeout(600)
def test_the_run_that_forgets_less_is_pareto_efficient_and_self_distillation_collapse_is_found(
    client: TestClient, settings, checkpoint_root: Path, tmp_path: Path
) -> None:
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    base = checkpoint_root / "base"
    tiny_gpt2(tokenizer, n_positions=32).save_pretrained(base)
    tokenizer.save_pretrained(base)
    assert (
        client.post("/v1/probe-sets", json={"name": "task", "domain": "in_domain", "items": TASK}).status_code
        == 201
    )
    assert (
        client.post("/v1/probe-sets", json={"name": "old", "domain": "ood", "items": OLD}).status_code == 201
    )
    for name, scale in NOISE.items():
        method = "self_distillation" if name == "large" else "grpo"
        made = client.post(
            "/v1/runs",
            json={
                "name": name,
                "base_model": str(base),
                "method": method,
                "tags": {"seed": "0"},
                "probe_sets": ["task", "old"],
            },
        )
        assert made.status_code == 201, made.text
        # the large run's teacher–student divergence falls to ~0 before its second checkpoint
        client.post(
            f"/v1/runs/{name}/metrics",
            json={
                "points": [
                    {"step": 1, "values": {"teacher_student_divergence": 0.4}},
                    {"step": 2, "values": {"teacher_student_divergence": DIVERGENCE[name]}},
                ]
            },
        )
        for step in (1, 2):
            uri = _perturbed(base, scale * step / 2, step, checkpoint_root / f"{name}-{step}")
            assert (
                client.post(f"/v1/runs/{name}/checkpoints", json={"step": step, "uri": str(uri)}).status_code
                == 202
            )
            responses = DIVERSE if step == 1 else ["= = = = = = = ="] * len(DIVERSE)
            client.post(
                f"/v1/runs/{name}/samples",
                json={
                    "step": step,
                    "items": [{"prompt": f"q{i}", "response": r} for i, r in enumerate(responses)],
                },
            )

    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        for name in NOISE:
            wait_for(
                lambda n=name: all(
                    c["status"] in ("ready", "failed") for c in client.get(f"/v1/runs/{n}/checkpoints").json()
                ),
                timeout=300,
                interval=1,
                what=f"checkpoints of {name}",
            )
            wait_for(
                lambda n=name: len(client.get(f"/v1/runs/{n}/response-drift").json()["samples"]) == 2,
                timeout=120,
                interval=1,
                what=f"sample drift of {name}",
            )
            wait_for(
                lambda n=name: (
                    (s := client.get(f"/v1/runs/{n}/status").json())["detection"] is not None
                    and s["detection"].get("step") == 2
                    and s
                ),
                timeout=120,
                interval=1,
                what=f"status of {name}",
            )
    finally:
        stop(worker)

    body = client.get(
        "/v1/compare", params={"runs": "small,large", "metric": "teacher_student_divergence"}
    ).json()
    small, large = body["runs"]
    drift = {n: client.get(f"/v1/runs/{n}/response-drift").json()["probe_sets"] for n in NOISE}
    for run in (small, large):
        # probe sets with references only: gain and loss are reference log-likelihood changes
        assert run["gain_metric"] == "loglik" and run["loss_metric"] == "loglik"
        assert [p["step"] for p in run["points"]] == [0, 1, 2]
        stored = drift[run["name"]]
        for point, task, old in zip(
            run["points"][1:], stored["task"]["series"], stored["old"]["series"], strict=True
        ):
            assert point["gain"] == pytest.approx(task["loglik_change"])
            assert point["loss"] == pytest.approx(-old["loglik_change"])
            assert point["loss_low"] == pytest.approx(-old["loglik_ci_high"])
        assert run["overlays"]["metric:teacher_student_divergence"] == [
            [1, 0.4],
            [2, DIVERGENCE[run["name"]]],
        ]
        assert [s for s, _ in run["overlays"]["param_relative_l2"]] == [1, 2]
    assert large["points"][-1]["loss"] > small["points"][-1]["loss"]  # 25× the noise forgets more
    assert (
        body["matched_step"] == 2
        and "small" in body["pareto_at_step"]
        and "large" not in body["pareto_latest"]
    )

    codes = {f["code"]: f for f in client.get("/v1/runs/large/status").json()["findings"]}
    assert codes["self_distillation_collapse"]["severity"] == "critical", codes
    assert {"diversity_drop", "repetition_rise"} <= set(codes)
    # the same loops without the divergence falling: degeneration, not the self-distillation collapse
    codes = {f["code"] for f in client.get("/v1/runs/small/status").json()["findings"]}
    assert "repetition_rise" in codes and "self_distillation_collapse" not in codes
    page = client.get("/compare", params={"runs": "small,large"})
    assert page.status_code == 200 and "<svg" in page.text and 'data-run="small"' in page.text
