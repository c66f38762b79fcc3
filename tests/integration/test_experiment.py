"""The project's own experiment at its smallest budget, reported through the client to a real service
whose worker analyses what arrives; then everything a user looks at is checked on what the product
itself produced: the demo's table from the API, `/` and every run page in a real headless Chromium,
and every link reachable from `/`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx
import pytest

from experiment.demo import print_table, run_summary
from experiment.pretrain import BaseConfig
from experiment.report import ServiceReporter, register_probe_sets, register_run
from experiment.train import run_experiment
from forgetwatch_client import ForgetwatchClient
from service.db.session import make_engine, make_sessionmaker
from service.db.tokens import create_token
from service.settings import Settings
from tests.conftest import create_database, drop_database, worker_env
from tests.integration.helpers import served_port, start, stop, wait_for
from tests.web.browser import assert_readable_png, console_errors, screenshot

PLOTS = ("risk", "forecasts", "param-drift", "block-heatmap", "probe-kl", "diversity", "forgetting")


@dataclass
class Experiment:
    url: str
    http: httpx.Client
    runs: list[str]


@pytest.fixture(scope="module")
def experiment(server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Experiment]:
    tmp = tmp_path_factory.mktemp("experiment")
    database_url = create_database(server_url, template=template_database)
    (tmp / "ckpts").mkdir()
    settings = Settings(database_url=database_url, data_dir=tmp / "data", checkpoint_roots=[tmp / "ckpts"])
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        token = create_token(session, name="experiment", scope="write")
        session.commit()
    engine.dispose()
    service = start(["serve", "--port", "0"], worker_env(settings), tmp / "serve.log")
    try:
        url = f"http://127.0.0.1:{served_port(tmp / 'serve.log')}"
        wait_for(lambda: _ready(url), timeout=90, what="service ready")
        with ForgetwatchClient(url, token, blocking=True) as setup:
            probe_sets = register_probe_sets(setup)
        clients = []

        def reporter(arm: str, run_name: str, base_dir: Path) -> ServiceReporter:
            clients.append(ForgetwatchClient(url, token, journal_path=tmp / f"{run_name}.jsonl"))
            return ServiceReporter(clients[-1], arm=arm, run_name=run_name, base_dir=base_dir, probe_sets=probe_sets,
                                   tags={})

        result = run_experiment(tmp / "ckpts" / "exp", steps=4, checkpoint_every=2, reporter_factory=reporter,
                                cache_dir=tmp / "ckpts" / "cache", base_config=BaseConfig(max_steps=20),
                                progress=False, num_threads=1)
        for client in clients:
            assert client.flush(60)
            client.close()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            runs = list(result.run_names.values())
            for run in runs:
                wait_for(lambda r=run: all(c["status"] in ("ready", "failed") for c in
                                           http.get(f"/v1/runs/{r}/checkpoints").json()),
                         timeout=300, interval=1, what=f"analyses of {run}")
                wait_for(lambda r=run: http.get(f"/v1/runs/{r}/status").json()["detection"] is not None,
                         timeout=120, interval=1, what=f"assessment of {run}")
            yield Experiment(url=url, http=http, runs=runs)
    finally:
        stop(service)
        drop_database(server_url, database_url)
    log = (tmp / "serve.log").read_text()
    assert "Traceback" not in log, "the service logged an exception:\n" + log[max(0, log.find("Traceback") - 3000):][:8000]


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_every_arm_reports_and_the_service_analyses_it(experiment: Experiment, capsys) -> None:
    http = experiment.http
    assert len(experiment.runs) == 3
    for run in experiment.runs:
        checkpoints = http.get(f"/v1/runs/{run}/checkpoints").json()
        assert [c["step"] for c in checkpoints] == [0, 2, 4]
        assert {c["status"] for c in checkpoints} == {"ready"}, [(c["step"], c["status"], c["error"]) for c in checkpoints]
        labels = http.get(f"/v1/runs/{run}/labels").json()["labels"]
        assert [row["step"] for row in labels] == [0, 2, 4] and "ood_accuracy" in labels[0]
    summaries = [run_summary(http, run) for run in experiment.runs]
    assert {s["method"] for s in summaries} == {"sft", "grpo", "self_distillation"}
    assert all(s["kl_ood"] is not None and s["param_rel_l2"] is not None for s in summaries)
    print_table(summaries)
    assert "in_gain" in capsys.readouterr().out


def test_every_page_of_the_real_runs_renders_in_chromium(experiment: Experiment, tmp_path: Path) -> None:
    index = httpx.get(experiment.url + "/")
    assert index.status_code == 200
    run_links = sorted(set(re.findall(r'href="(/runs/[^"]+)"', index.text)))
    assert len(run_links) == len(experiment.runs)
    for i, path in enumerate(["/", *run_links]):
        page = httpx.get(experiment.url + path)
        assert page.status_code == 200, (path, page.text[-2000:])
        assert "data-failed=" not in page.text and "could not be drawn" not in page.text, path
        if path != "/":
            for plot in PLOTS:
                assert f"id='plot-{plot}' data-empty='false'" in page.text, (path, plot)
        shot = tmp_path / f"page-{i}.png"
        log = screenshot(experiment.url + path, shot, tmp_path / f"profile-{i}")
        assert not console_errors(log), (path, console_errors(log))
        assert_readable_png(shot)


def test_no_link_reachable_from_the_index_answers_a_server_error(experiment: Experiment) -> None:
    """Follows every same-site link from `/` (pages and the JSON they point to), breadth first."""
    base = experiment.url
    seen: dict[str, int] = {}
    queue = ["/"]
    while queue and len(seen) < 200:
        path = queue.pop(0)
        if path in seen:
            continue
        response = experiment.http.get(path)
        seen[path] = response.status_code
        if "text/html" in response.headers.get("content-type", ""):
            for href in re.findall(r'href="([^"#]+)"', response.text):
                target = urlparse(urljoin(base + path, href))
                if target.netloc == urlparse(base).netloc and target.path not in seen:
                    queue.append(target.path + (f"?{target.query}" if target.query else ""))
    assert len([p for p in seen if p.startswith("/runs/")]) == len(experiment.runs)
    errors = {path: status for path, status in seen.items() if status >= 500}
    assert not errors, errors


def test_a_run_the_service_refuses_stops_the_experiment_with_its_reason(experiment: Experiment, tmp_path: Path) -> None:
    token = experiment.http.headers["Authorization"].split()[1]
    with pytest.raises(SystemExit, match=r"refused run outside-roots: .*403"):
        register_run(experiment.url, token, run_name="outside-roots", arm="sft", base_dir=tmp_path / "base",
                     probe_sets=[], tags={})
    assert experiment.http.get("/v1/runs/outside-roots").status_code == 404
