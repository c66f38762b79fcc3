"""The `/compare` page shows what `GET /v1/compare` returns, and the run list and run page link to it."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.service.test_compare import seed_runs, store_results


@pytest.fixture
def web(client: TestClient, engine: Engine, base_model: str) -> TestClient:
    seed_runs(client, engine, base_model)
    return client


def _numbers(body: str) -> dict[str, str]:
    return dict(re.findall(r'data-metric="([^"]+)" data-value="([^"]*)"', body))


def test_the_page_shows_the_apis_numbers_the_pareto_scatter_and_the_overlays(web: TestClient) -> None:
    api = web.get("/v1/compare", params={"runs": "sft-a,grpo-b,sd-c"}).json()
    response = web.get("/compare", params={"runs": "sft-a,grpo-b,sd-c"})
    assert response.status_code == 200
    numbers = _numbers(response.text)
    for run in api["runs"]:
        assert float(numbers[f"compare.{run['name']}.at_step.loss"]) == run["at_step"]["loss"]
        assert float(numbers[f"compare.{run['name']}.at_gain.loss"]) == run["at_gain"]["loss"]
    rows = re.findall(
        r'data-run="([^"]+)".*?<span class=\'(pill risk-low|muted)\'>(efficient|dominated)',
        response.text,
        re.DOTALL,
    )
    assert [(name, word) for name, _, word in rows] == [
        ("sft-a", "efficient"),
        ("grpo-b", "efficient"),
        ("sd-c", "dominated"),
    ]
    for plot in ("pareto", "accuracy_in_domain", "kl_forward_ood"):
        assert re.search(rf"id='plot-{plot}' data-empty='false'><svg", response.text), plot
    assert "id='plot-risk' data-empty='true'" in response.text  # nothing assessed: a note, not an empty plot


def test_the_run_list_links_to_the_comparison_and_tags_select_runs(web: TestClient) -> None:
    index = web.get("/").text
    assert 'href="/compare"' in index and 'href="/compare?tag=method:grpo"' in index
    grpo = web.get("/compare", params={"tag": "method:grpo"}).text
    assert re.findall(r'data-run="([^"]+)"', grpo) == ["grpo-b"]


def test_bad_selections_are_pages_that_say_what_to_do(web: TestClient) -> None:
    missing = web.get("/compare", params={"runs": "sft-a,nope"})
    assert missing.status_code == 404 and "no run &#x27;nope&#x27;" in missing.text
    bad = web.get("/compare", params={"runs": "sft-a", "step": "nan"})
    assert bad.status_code == 422 and "not a finite number" in html.unescape(bad.text)
    tag = web.get("/compare", params={"tag": "nokey"})
    assert tag.status_code == 422 and "KEY=VALUE" in tag.text


def test_the_run_page_shows_the_entropy_ceiling_or_why_not(web: TestClient) -> None:
    body = web.get("/runs/sft-a").text
    assert "id='entropy-ceiling'" in body and "Not applicable: no training metric named entropy" in body


def test_the_run_page_shows_the_fitted_ceiling_equal_to_the_api(web: TestClient, engine: Engine) -> None:
    run_id = web.get("/v1/runs/grpo-b").json()["id"]
    entropy = {300: 0.6, 400: 0.4, 500: 0.2}  # with the fixture's steps 100, 200: five paired points
    for step in entropy:
        store_results(engine, run_id, step, {"task": (0.3, 0.6), "old": (-0.05, 0.85)})
    points = [{"step": 100, "values": {"entropy": 1.0}}, {"step": 200, "values": {"entropy": 0.8}}]
    points += [{"step": s, "values": {"entropy": h}} for s, h in entropy.items()]
    assert web.post("/v1/runs/grpo-b/metrics", json={"points": points}).status_code == 202
    ceiling = web.get("/v1/compare", params={"runs": "grpo-b"}).json()["runs"][0]["entropy_ceiling"]
    assert ceiling["applicable"] and ceiling["n_points"] == 5
    body = web.get("/runs/grpo-b").text
    assert float(_numbers(body)["entropy_ceiling"]) == ceiling["ceiling"]
    assert "Fitted R ≈ −a·e<sup>H</sup> + b on 5 checkpoints" in body
