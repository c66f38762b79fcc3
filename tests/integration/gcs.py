"""A real Google Cloud Storage JSON API server for the tests: gcp-storage-emulator on 127.0.0.1 and a
free port, with its buckets made at start; clients reach it the standard way (`STORAGE_EMULATOR_HOST`,
anonymous credentials)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.helpers import free_port, stop


@dataclass(frozen=True)
class GCSServer:
    endpoint: str

    def env(self) -> dict[str, str]:
        """The standard variables gcsfs and fsspec read (what a worker gets from its environment)."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "FSSPEC_GS_TOKEN": "anon"}

    def filesystem(self, **overrides):
        from gcsfs.core import GCSFileSystem

        options = {"endpoint_url": self.endpoint, "token": "anon", "project": "forgetwatch-test", **overrides}
        return GCSFileSystem(skip_instance_cache=True, **options)


def _ready(server: GCSServer, bucket: str) -> bool:
    try:
        with urllib.request.urlopen(f"{server.endpoint}/storage/v1/b/{bucket}", timeout=2) as response:
            return response.status == 200
    except OSError:  # not listening yet, or the bucket not made yet
        return False


@contextmanager
def gcs_emulator(
    root: Path, *, buckets: tuple[str, ...] = ("models",), timeout: float = 60
) -> Iterator[GCSServer]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(root / "gcs.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "-d",
            str(root / "data"),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--default-bucket",
            buckets[0],
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = GCSServer(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + timeout
        while not _ready(server, buckets[0]):
            if process.poll() is not None:
                raise RuntimeError(
                    f"gcp-storage-emulator exited with {process.returncode}; see {root / 'gcs.log'}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"gcp-storage-emulator not ready after {timeout}s; see {root / 'gcs.log'}")
            time.sleep(0.2)
        fs = server.filesystem()
        for bucket in buckets[1:]:
            fs.mkdir(bucket)
        yield server
    finally:
        stop(process, timeout=5)
        log.close()
