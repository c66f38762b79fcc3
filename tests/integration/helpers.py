"""Subprocess helpers for integration tests: real `forgetwatch` processes, bounded waits."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

FORGETWATCH = str(Path(sys.executable).with_name("forgetwatch"))
T = TypeVar("T")


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([FORGETWATCH, *args], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def postmasters(under: Path) -> list[psutil.Process]:
    """PostgreSQL servers whose data directory lies at or under `under` (the postmaster, started with -D)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and "-D" in cmdline[:-1]:
            pgdata = Path(cmdline[cmdline.index("-D") + 1])
            if pgdata == under or under in pgdata.parents:
                found.append(process)
    return found


def wait_for(condition: Callable[[], T], *, timeout: float, interval: float = 0.2, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def listening_port(process: subprocess.Popen, *, timeout: float = 60) -> int:
    """The TCP port ``process`` listens on once it has bound one (started with port 0): read back from
    the kernel, so no port is picked first and raced for."""
    def bound() -> int | None:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode} before listening")
        ports = [c.laddr.port for c in psutil.Process(process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
        return ports[0] if ports else None

    return wait_for(bound, timeout=timeout, interval=0.05, what=f"{process.args!r} to listen")


def free_port() -> int:
    """A port nothing listens on now: for a client pointed at nothing, or a server that cannot bind
    port 0 and report it (`listening_port` otherwise)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_sparse_safetensors(path: Path, data_bytes: int, *, dtype: str = "U8") -> None:
    """A valid safetensors file holding one tensor of `data_bytes` zero bytes, stored sparse
    (no disk used), so jobs that read it take a while without filling the disk."""
    itemsize = {"U8": 1, "BF16": 2, "F16": 2, "F32": 4}[dtype]
    shape = [data_bytes // itemsize // 1024, 1024]
    header = json.dumps({"blob": {"dtype": dtype, "shape": shape, "data_offsets": [0, data_bytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as out:
        out.write(len(header).to_bytes(8, "little"))
        out.write(header)
        out.truncate(8 + len(header) + data_bytes)


def served_port(log: Path, *, timeout: float = 120) -> int:
    """The port a server started with `--port 0` bound, read back from uvicorn's start-up line."""

    def bound() -> int | None:
        text = log.read_text() if log.exists() else ""
        match = re.search(r"Uvicorn running on https?://[^\s:]+:(\d+)", text)
        return int(match.group(1)) if match else None

    return wait_for(bound, timeout=timeout, what=f"the bound port in {log.name}")
