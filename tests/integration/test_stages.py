"""A run trained through stages, end to end: a tiny model learns one skill per stage, its checkpoints go
through the API and a real worker, and the transfer matrix, retention, /metrics and the page are read back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import worker_env
from tests.integration.helpers import start, stop, wait_for
from tests.integration.models import char_tokenizer, tiny_gpt2

LETTERS = "abcdefghijklmnop"
SKILLS = {
    "math": [(f"{x}+{y}=", str((x + y) % 10)) for x in range(4) for y in range(4)],
    "chem": [(f"{a}>", LETTERS[(i + 1) % 16]) for i, a in enumerate(LETTERS)],
    "tools": [(f"{x}*{y}=", str(x * y % 10)) for x in range(4) for y in range(4)],
    "arith": [(f"{x}-{y}=", str(x - y)) for x in range(4) for y in range(x + 1)],
}
DOMAINS = {"math": "in_domain", "chem": "in_domain", "tools": "in_domain", "arith": "ood"}


def _train(model, tokenizer, pairs, *, steps: int, save: dict[int, Path], first_step: int) -> None:
    """Full-batch Adam on prompt + answer + EOS (loss on the answer and EOS), saving at the given steps."""
    rows = [(tokenizer(p).input_ids, tokenizer(a).input_ids + [tokenizer.eos_token_id]) for p, a in pairs]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(first_step + 1, first_step + steps + 1):
        model(
            ids, attention_mask=(labels != -100) | (ids != tokenizer.pad_token_id), labels=labels
        ).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in save:
            model.save_pretrained(save[step])
    model.eval()


@pytest.fixture
def staged_checkpoints(checkpoint_root: Path) -> dict[int, Path]:
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer, n_positions=32)
    model.save_pretrained(checkpoint_root / "base")
    tokenizer.save_pretrained(checkpoint_root / "base")
    torch.manual_seed(1)
    paths = {step: checkpoint_root / f"step-{step}" for step in (200, 300, 400)}
    _train(model, tokenizer, SKILLS["math"], steps=200, save=paths, first_step=0)  # stage math: steps 1-200
    _train(model, tokenizer, SKILLS["chem"], steps=200, save=paths, first_step=200)  # stage chem: from 201
    return paths


@pytest.mark.timeout(900)  # training two skills and probing three checkpoints: minutes on a loaded machine
def test_transfer_matrix_retention_metrics_and_page_of_a_staged_run(
    client: TestClient, settings, checkpoint_root: Path, staged_checkpoints: dict[int, Path], tmp_path: Path
) -> None:
    for name, pairs in SKILLS.items():
        items = [{"prompt": p, "reference": a, "answer": a} for p, a in pairs]
        assert client.post(
            "/v1/probe-sets", json={"name": name, "domain": DOMAINS[name], "items": items}
        ).is_success
    base = str(checkpoint_root / "base")
    assert client.post(
        "/v1/runs", json={"name": "staged", "base_model": base, "probe_sets": ["arith"]}
    ).is_success
    for name, start_step in (("math", 0), ("chem", 201), ("tools", 500)):
        response = client.post(
            "/v1/runs/staged/stages", json={"name": name, "start_step": start_step, "probe_sets": [name]}
        )
        assert response.status_code == 201, response.text
    for step, path in staged_checkpoints.items():
        assert (
            client.post("/v1/runs/staged/checkpoints", json={"step": step, "uri": str(path)}).status_code
            == 202
        )

    worker = start(["worker"], worker_env(settings), tmp_path / "worker.log")
    try:
        for step in staged_checkpoints:
            done = wait_for(
                lambda s=step: (
                    (c := client.get(f"/v1/runs/staged/checkpoints/{s}").json())["status"]
                    in ("ready", "failed")
                    and c
                ),
                timeout=600,
                interval=1,
                what=f"step {step}",
            )
            assert done["status"] == "ready", done
        # before the tools stage runs: its preview, forecast from the math and chem stages' history
        prompts = [p for p, _ in SKILLS["tools"]]
        assert client.post("/v1/runs/staged/stages/tools/preview", json={"prompts": prompts}).status_code == 202
        preview = wait_for(
            lambda: (c := client.get("/v1/runs/staged/stages/tools/preview").json())["status"] != "pending" and c,
            timeout=600, interval=1, what="the preview's forecast")
    finally:
        stop(worker)

    body = client.get("/v1/runs/staged/transfer").json()
    assert [(r["stage"], r["checkpoint_step"], r["complete"]) for r in body["rows"]] == [
        (None, None, True),
        ("math", 200, True),
        ("chem", 400, False),
        ("tools", None, False),
    ]
    accuracy = body["metrics"]["accuracy"]
    assert [(p["name"], p["stage"]) for p in accuracy["probe_sets"]] == [
        ("math", "math"),
        ("chem", "chem"),
        ("tools", "tools"),
        ("arith", None),
    ]
    R = [[cell["value"] for cell in row] for row in accuracy["matrix"]]
    # each cell is the accuracy the worker stored for that checkpoint (and the base's for row 0)
    drift = client.get("/v1/runs/staged/response-drift").json()["probe_sets"]
    stored = {(p, s["step"]): s for p, d in drift.items() for s in d["series"]}
    for column, name in enumerate(("math", "chem", "tools", "arith")):
        assert R[0][column] == pytest.approx(stored[(name, 200)]["accuracy_base"])
        assert R[1][column] == pytest.approx(stored[(name, 200)]["accuracy"])
        assert R[2][column] == pytest.approx(stored[(name, 400)]["accuracy"])
    assert R[1][0] >= 0.9 and R[2][1] >= 0.9  # each stage learned its skill
    assert R[0][0] <= 0.2 and R[0][1] <= 0.2  # the base had neither
    assert R[2][0] <= 0.25  # and learning chem overwrote math
    assert R[3] == [None] * 4 and all("no analysed checkpoint" in c["reason"] for c in accuracy["matrix"][3])
    # BWT: only stage 1 has ended before the current row 2; FWT: stages 2 and 3 against the base
    assert accuracy["final_row"] == 2
    bwt, fwt = accuracy["bwt"], accuracy["fwt"]
    assert bwt["value"] == pytest.approx(R[2][0] - R[1][0]) and bwt["n_stages"] == 1
    assert (
        fwt["value"] == pytest.approx(((R[1][1] - R[0][1]) + (R[2][2] - R[0][2])) / 2)
        and fwt["n_stages"] == 2
    )
    assert bwt["ci_low"] <= bwt["value"] <= bwt["ci_high"] < 0  # forgetting, the whole interval below 0
    assert fwt["ci_low"] <= fwt["value"] <= fwt["ci_high"]
    loglik = body["metrics"]["loglik"]
    assert loglik["matrix"][1][0]["value"] == pytest.approx(stored[("math", 200)]["loglik"], abs=1e-9)
    assert loglik["bwt"]["value"] < 0  # training on chem lowered the likelihood of math's answers

    # the chem stage against its start (the end of math) on its retention sets
    retention = client.get("/v1/runs/staged/stages/chem/retention").json()
    assert retention["retention_sets"] == ["math", "arith"]
    assert retention["reference"] == {"row": 1, "stage": "math", "checkpoint_step": 200}
    assert [c["step"] for c in retention["checkpoints"]] == [300, 400]
    last = {(e["probe_set"], e["metric"]): e for e in retention["checkpoints"][-1]["probe_sets"]}
    math_acc = last[("math", "accuracy")]
    assert math_acc["start"] == pytest.approx(R[1][0]) and math_acc["current"] == pytest.approx(R[2][0])
    assert math_acc["ci_low"] <= math_acc["change"] <= math_acc["ci_high"] < 0
    assert math_acc["drop_ratio"] == pytest.approx((R[1][0] - R[2][0]) / R[1][0])

    # the same numbers on the checkpoint's own response drift
    since = client.get("/v1/runs/staged/checkpoints/400/response-drift").json()["since_stage_start"]
    assert since["stage"] == "chem" and since["reference"]["checkpoint_step"] == 200
    assert {(e["probe_set"], e["metric"]): e for e in since["probe_sets"]}[("math", "accuracy")] == math_acc
    assert (
        client.get("/v1/runs/staged/checkpoints/200/response-drift").json()["since_stage_start"]["stage"]
        == "math"
    )

    # the forecast learned from the run's own stages: math cost arith, chem cost math and arith
    assert preview["status"] == "done", preview
    forecast = preview["forecast"]
    history = {(h["stage"], h["probe_set"]): h for h in forecast["history"]}
    assert sorted(history) == [("chem", "arith"), ("chem", "math"), ("math", "arith")]
    assert history[("chem", "math")]["loss"] == pytest.approx((R[1][0] - R[2][0]) / R[1][0])
    assert {h["training_prompts"] for h in history.values()} == {"probe_sets"}  # no earlier previews
    assert forecast["curve"]["source"] == "history" and forecast["curve"]["n_pairs"] == 3
    assert [e["probe_set"] for e in forecast["retention_sets"]] == ["math", "chem", "arith"]
    assert all(e["ci_low"] < e["loss"] < e["ci_high"] for e in forecast["retention_sets"])

    metrics = client.get("/metrics").text
    found = re.search(r'forgetwatch_retention_drop_ratio\{[^}]*probe_set="math"[^}]*\} (\S+)', metrics)
    assert found, metrics
    assert 'stage="chem"' in found.group(0) and 'run="staged"' in found.group(0)
    assert float(found.group(1)) == pytest.approx(math_acc["drop_ratio"]) and float(found.group(1)) > 0.5
    forecast_math = {e["probe_set"]: e for e in forecast["retention_sets"]}["math"]
    for bound, key in (("estimate", "loss"), ("ci_low", "ci_low"), ("ci_high", "ci_high")):
        gauge = re.search(r'forgetwatch_preflight_forecast_drop_ratio\{(?=[^}]*stage="tools")(?=[^}]*probe_set="math")'
                          rf'(?=[^}}]*bound="{bound}")[^}}]*\}} (\S+)', metrics)
        assert gauge, metrics
        assert float(gauge.group(1)) == pytest.approx(forecast_math[key])

    page = client.get("/runs/staged")
    assert page.status_code == 200
    assert 'id="transfer-matrix"' in page.text and "stage-boundary-chem" in page.text
    assert "id='plot-transfer-accuracy' data-empty='false'" in page.text  # the heat map was drawn
    assert "id='plot-preflight-tools' data-empty='false'" in page.text  # the tools stage's forecast curve
    assert "fitted on 3 (distance, loss) pairs" in page.text
