"""End to end: drifting checkpoints -> two workers -> /metrics -> a real Prometheus evaluating the
project's rules -> a real Alertmanager -> the on-call webhook. A stable run must stay quiet.

Time is compressed: scrape and evaluation every second and every `for:` cut to 2s; the rule
expressions are the shipped ones.
"""

import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import yaml
from fastapi.testclient import TestClient

from tests.conftest import worker_env
from tests.integration.helpers import free_port, start, stop, wait_for
from tests.integration.models import save_tiny_gpt2_run

ROOT = Path(__file__).resolve().parents[2]


class Webhook:
    """Records what Alertmanager posts."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.alerts.extend(body.get("alerts", []))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, alertname: str) -> set[str]:
        return {a["labels"].get("run", "") for a in self.alerts
                if a["labels"]["alertname"] == alertname and a["status"] == "firing"}


def _compressed_rules(tmp_path: Path) -> Path:
    rules = yaml.safe_load((ROOT / "prometheus/rules/forgetwatch.rules.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def _binary(*names: str) -> str:
    for name in names:
        if path := shutil.which(name):
            return path
    raise AssertionError(f"{names[0]} not found: apt-get install prometheus prometheus-alertmanager")


def test_drifting_run_pages_on_call_and_stable_run_does_not(client: TestClient, settings, tokens,
                                                             checkpoint_root: Path, tmp_path: Path) -> None:
    drifting = save_tiny_gpt2_run(checkpoint_root / "drifting", steps=2, lr=3e-2)
    stable = checkpoint_root / "stable"
    stable.mkdir()
    for name, source in (("base", drifting[0]), ("step-1", drifting[0]), ("step-2", drifting[0])):
        shutil.copytree(source, stable / name)
    for run, paths in (("drifting", drifting), ("stable", [stable / "base", stable / "step-1", stable / "step-2"])):
        client.post("/v1/runs", json={"name": run, "base_model": str(paths[0]), "method": "sft"})
        for step, path in enumerate(paths[1:], start=1):
            client.post(f"/v1/runs/{run}/checkpoints", json={"step": step, "uri": str(path)})

    hook = Webhook()
    api_port, prom_port, am_port = free_port(), free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "oncall", "group_by": ["run", "alertname"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "oncall", "webhook_configs": [{"url": hook.url}]}],
    }))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(_compressed_rules(tmp_path))],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "forgetwatch", "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}],
    }))
    env = worker_env(settings)
    processes = [
        start(["serve", "--no-worker", "--port", str(api_port)], env, tmp_path / "api.log"),
        start(["worker"], env, tmp_path / "worker1.log"),  # the compose topology: API without a worker,
        start(["worker"], env, tmp_path / "worker2.log"),  # workers scaled out, Prometheus, Alertmanager
    ]
    for command, log in (
        ([_binary("prometheus-alertmanager", "alertmanager"), f"--config.file={tmp_path / 'alertmanager.yml'}",
          f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
          "--cluster.listen-address="], "alertmanager.log"),
        ([_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
          f"--storage.tsdb.path={tmp_path / 'prom'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
         "prometheus.log"),
    ):
        processes.append(subprocess.Popen(command, stdout=open(tmp_path / log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                          start_new_session=True))
    try:
        wait_for(lambda: "drifting" in hook.firing("CollapseRiskHigh"), timeout=180, interval=1,
                 what="CollapseRiskHigh for the drifting run at the webhook")
        # The stable run is assessed too (its risk is exported) and stays below the threshold.
        query = f"http://127.0.0.1:{prom_port}/api/v1/query"
        result = httpx.get(query, params={"query": 'forgetwatch_collapse_risk{run="stable"}'}).json()
        assert result["data"]["result"], "the stable run's risk never reached Prometheus"
        assert float(result["data"]["result"][0]["value"][1]) < 0.5
    finally:
        for process in processes:
            stop(process)
    assert "stable" not in hook.firing("CollapseRiskHigh")
    drifting_alert = next(a for a in hook.alerts if a["labels"]["alertname"] == "CollapseRiskHigh")
    assert re.search(r"Run drifting \(sft\): collapse risk \d", drifting_alert["annotations"]["summary"])
    assert drifting_alert["annotations"]["runbook"].endswith("#collapseriskhigh")
