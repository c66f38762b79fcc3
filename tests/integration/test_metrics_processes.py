"""Several API processes export one truth: `forgetwatch serve --workers 2` counts every request in
shared files, so each scrape, whichever process answers it, reports all of them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

from service.settings import Settings
from tests.integration.helpers import served_port, start, stop, wait_for

HEALTHZ = re.compile(r'^forgetwatch_http_requests_total\{(?=[^}]*route="/healthz")(?=[^}]*status="200")[^}]*\} (\S+)$',
                     re.MULTILINE)


def _healthz_count(base: str) -> float:
    return sum(float(v) for v in HEALTHZ.findall(httpx.get(base + "/metrics", timeout=10).text))


def test_every_scrape_counts_the_requests_of_every_api_process(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": settings.database_url or "",
           "FORGETWATCH_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "serve.log"
    server = start(["serve", "--no-worker", "--workers", "2", "--port", "0"], env, log)
    try:
        base = f"http://127.0.0.1:{served_port(log)}"
        wait_for(lambda: len(re.findall(r"Application startup complete", log.read_text())) == 2, timeout=120,
                 what="both API processes up")
        for _ in range(40):  # a new connection each: the kernel spreads them over both processes
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        pids = set(re.findall(r"Started server process \[(\d+)\]", log.read_text()))
        assert len(pids) == 2
        scrapes = [_healthz_count(base) for _ in range(6)]
        assert scrapes == [40.0] * 6
    finally:
        stop(server)
    assert (tmp_path / "data" / "prometheus").is_dir()
