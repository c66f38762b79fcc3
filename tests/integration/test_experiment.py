"""A short experiment smoke run: every arm trains a few steps and reports through the client to a
real service, whose worker analyses what arrives; the demo's table is built from the API."""

from pathlib import Path

import httpx

from service.client import ForgetwatchClient
from service.demo import print_table, run_summary
from service.experiment.pretrain import BaseConfig
from service.experiment.report import ServiceReporter, register_probe_sets
from service.experiment.train import run_experiment
from tests.conftest import worker_env
from tests.integration.helpers import free_port, start, stop, wait_for


def test_every_arm_reports_and_the_service_analyses_it(settings, tokens, checkpoint_root: Path, tmp_path: Path,
                                                        capsys) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start(["serve", "--port", str(port)], worker_env(settings), tmp_path / "serve.log")
    token = tokens["write"]
    try:
        wait_for(lambda: _ready(url), timeout=90, what="service ready")
        with ForgetwatchClient(url, token, blocking=True) as setup:
            probe_sets = register_probe_sets(setup)
        clients = []

        def reporter(arm: str, run_name: str, base_dir: Path) -> ServiceReporter:
            clients.append(ForgetwatchClient(url, token, journal_path=tmp_path / f"{run_name}.jsonl"))
            return ServiceReporter(clients[-1], arm=arm, run_name=run_name, base_dir=base_dir, probe_sets=probe_sets,
                                   tags={})

        result = run_experiment(checkpoint_root / "exp", steps=4, checkpoint_every=2, reporter_factory=reporter,
                                cache_dir=checkpoint_root / "cache", base_config=BaseConfig(max_steps=20),
                                progress=False, num_threads=1)
        for client in clients:
            assert client.flush(60)
            client.close()
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        runs = list(result.run_names.values())
        assert len(runs) == 3
        for run in runs:
            wait_for(lambda r=run: all(c["status"] in ("ready", "failed") for c in
                                       http.get(f"/v1/runs/{r}/checkpoints").json()),
                     timeout=300, interval=1, what=f"analyses of {run}")
            checkpoints = http.get(f"/v1/runs/{run}/checkpoints").json()
            assert [c["step"] for c in checkpoints] == [0, 2, 4]
            assert {c["status"] for c in checkpoints} == {"ready"}, checkpoints
            labels = http.get(f"/v1/runs/{run}/labels").json()["labels"]
            assert [row["step"] for row in labels] == [0, 2, 4] and "ood_accuracy" in labels[0]
        summaries = [run_summary(http, run) for run in runs]
    finally:
        stop(service)
    assert {s["method"] for s in summaries} == {"sft", "grpo", "self_distillation"}
    assert all(s["kl_ood"] is not None and s["param_rel_l2"] is not None for s in summaries)
    print_table(summaries)
    assert "in_gain" in capsys.readouterr().out


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
