"""A real `forgetwatch serve --no-worker` for client tests, with helpers to read what it stored."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx

from forgetwatch_client import ForgetwatchClient
from service.settings import Settings
from tests.conftest import make_base_model, worker_env
from tests.integration.helpers import free_port, listening_port, start, stop, wait_for


class Service:
    """A `forgetwatch serve --no-worker` subprocess on the test's database. Its first start binds port 0
    and reads the port back; a restart binds that port again, as a trainer's client keeps the URL."""

    def __init__(self, settings: Settings, token: str, log: Path) -> None:
        self.env = worker_env(settings)
        self.token = token
        self.log = log
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        roots = self.env["FORGETWATCH_CHECKPOINT_ROOTS"].split(",")
        self.base_model = str(make_base_model(Path(roots[0]) / "stub-base"))
        """A base_model this service accepts (tests/conftest.make_base_model)."""

    @property
    def url(self) -> str:
        if self.port is None:
            raise AssertionError("the service has no address before its first start")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = start(["serve", "--no-worker", "--port", str(self.port or 0)], self.env, self.log)
        if self.port is None:
            self.port = listening_port(self.process)
        wait_for(self._ready, timeout=60, interval=0.1, what=f"forgetwatch serve on {self.url}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop(self.process, sig)
            self.process = None

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"serve exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
            )
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str, **params: object) -> object:
        response = httpx.get(
            self.url + path, params=params, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def count_samples(self, run: str) -> int:
        response = httpx.get(
            f"{self.url}/v1/runs/{run}/samples",
            params={"limit": 10_000},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        return len(response.json()) if response.status_code == 200 else 0

    def client(self, **options: object) -> ForgetwatchClient:
        options = {"backoff_base": 0.05, "backoff_cap": 0.5, **options}
        return ForgetwatchClient(self.url, self.token, **options)


def prompts(service: Service, run: str, **params: object) -> list[str]:
    return [s["prompt"] for s in service.get(f"/v1/runs/{run}/samples", limit=10_000, **params)]


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there
