"""End to end: checkpoints that forget their ood probes -> two workers -> /metrics -> a real Prometheus
evaluating the project's rules -> a real Alertmanager -> the on-call webhook. A stable run must stay quiet.

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
import torch
import yaml
from fastapi.testclient import TestClient

from tests.conftest import worker_env
from tests.integration.helpers import listening_port, start, stop, wait_for
from tests.integration.models import char_tokenizer, tiny_gpt2

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


ITEMS = [{"prompt": f"{a}+{b}=", "reference": str(a + b), "answer": str(a + b)} for a in range(4) for b in range(4)]


def _runs(root: Path) -> dict[str, list[Path]]:
    """drifting: a tiny GPT-2 whose weights get noise at each step (its ood reference log-likelihood
    falls far below the base's); stable: the base saved again at every step."""
    tokenizer = char_tokenizer()
    model = tiny_gpt2(tokenizer, n_positions=32)
    runs: dict[str, list[Path]] = {"drifting": [], "stable": []}
    for name, paths in runs.items():
        folder = root / name / "base"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        paths.append(folder)
    for step in (1, 2):
        for name in ("stable", "drifting"):
            if name == "drifting":
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.5)
            folder = root / name / f"step-{step}"
            (model if name == "drifting" else tiny_gpt2(tokenizer, n_positions=32)).save_pretrained(folder)
            runs[name].append(folder)
    return runs


def test_forgetting_run_pages_on_call_and_stable_run_does_not(client: TestClient, settings, tokens,
                                                               checkpoint_root: Path, tmp_path: Path) -> None:
    client.post("/v1/probe-sets", json={"name": "arith", "domain": "ood", "items": ITEMS})
    for run, paths in _runs(checkpoint_root).items():
        client.post("/v1/runs", json={"name": run, "base_model": str(paths[0]), "method": "sft",
                                      "probe_sets": ["arith"]})
        for step, path in enumerate(paths[1:], start=1):
            client.post(f"/v1/runs/{run}/checkpoints", json={"step": step, "uri": str(path)})

    hook = Webhook()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "oncall", "group_by": ["run", "alertname"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "oncall", "webhook_configs": [{"url": hook.url}]}],
    }))
    env = worker_env(settings)
    api = start(["serve", "--no-worker", "--port", "0"], env, tmp_path / "api.log")
    processes = [
        api,
        start(["worker"], env, tmp_path / "worker1.log"),  # the compose topology: API without a worker,
        start(["worker"], env, tmp_path / "worker2.log"),  # workers scaled out, Prometheus, Alertmanager
    ]

    def launch(command: list[str], log: str) -> int:
        """Start ``command`` (bound to port 0) and return the port it listens on."""
        processes.append(subprocess.Popen(command, stdout=open(tmp_path / log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                          start_new_session=True))
        return listening_port(processes[-1])

    try:
        api_port = listening_port(api)
        am_port = launch([_binary("prometheus-alertmanager", "alertmanager"),
                          f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
                          "--web.listen-address=127.0.0.1:0", "--cluster.listen-address="], "alertmanager.log")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(_compressed_rules(tmp_path))],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "forgetwatch",
                                "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}],
        }))
        prom_port = launch([_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp_path / 'prom'}", "--web.listen-address=127.0.0.1:0"],
                           "prometheus.log")
        wait_for(lambda: "drifting" in hook.firing("OODForgettingDetected"), timeout=240, interval=1,
                 what="OODForgettingDetected for the drifting run at the webhook")
        # The stable run is measured too (its detection is exported) and shows nothing.
        query = f"http://127.0.0.1:{prom_port}/api/v1/query"
        result = wait_for(lambda: (r := httpx.get(query, params={
            "query": 'forgetwatch_ood_forgetting_detected{run="stable"}'}).json())["data"]["result"] and r,
            timeout=120, interval=1, what="the stable run's detection in Prometheus")
        assert float(result["data"]["result"][0]["value"][1]) == 0.0
    finally:
        for process in processes:
            stop(process)
    assert "stable" not in hook.firing("OODForgettingDetected")
    assert not hook.firing("ForgettingPredicted")  # two checkpoints: no forecast yet, and none once detected
    alert = next(a for a in hook.alerts if a["labels"]["alertname"] == "OODForgettingDetected")
    assert re.search(r"Run drifting \(sft\): ood forgetting detected, at least \d+(\.\d+)?% below the base",
                     alert["annotations"]["summary"]), alert["annotations"]["summary"]
    assert alert["annotations"]["runbook"].endswith("#oodforgettingdetected")
