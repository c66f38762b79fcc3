"""The trainer-side client against a real `forgetwatch serve` process on the test's database:
ordering, retries with idempotency across a SIGKILLed server, the journal across outages and
trainer restarts, and calls that stay fast and bounded while the service is down."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgetwatch_client import ForgetwatchClient, ForgetwatchError
from tests.integration.helpers import wait_for
from tests.integration.service_fixture import Service, dead_url, prompts


def test_calls_arrive_in_the_order_they_were_made(service: Service, tmp_path: Path) -> None:
    client = service.client(journal_path=tmp_path / "journal.jsonl")
    client.run("ordered", base_model=service.base_model)
    for i in range(60):
        client.samples(1, [{"prompt": f"p{i}", "response": "r"}])
    client.samples(2, [{"prompt": f"q{i}", "response": "r"} for i in range(1200)])  # 3 batches
    assert client.flush(30)
    client.close()
    assert prompts(service, "ordered", step=1) == [f"p{i}" for i in range(60)]  # stored in arrival order
    assert prompts(service, "ordered", step=2) == [f"q{i}" for i in range(1200)]
    assert client.stats["sent"] == 1 + 60 + 3


def test_server_killed_mid_stream_stores_every_call_exactly_once(service: Service, tmp_path: Path) -> None:
    client = service.client(journal_path=tmp_path / "journal.jsonl")
    client.run("killed", base_model=service.base_model)
    for i in range(100):
        client.samples(i, [{"prompt": f"p{i}", "response": "r"}])
    wait_for(lambda: service.count_samples("killed") >= 10, timeout=30, interval=0.02, what="first samples")
    service.stop(signal.SIGKILL)
    for i in range(100, 130):  # made while the service is down
        client.samples(i, [{"prompt": f"p{i}", "response": "r"}])
    service.start()
    assert client.flush(60)
    client.close()
    stored = prompts(service, "killed")
    assert stored == [f"p{i}" for i in range(130)]  # each once, in step order
    assert client.stats["retried"] >= 1


def test_journal_outlives_the_service_and_the_trainer(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default journal lives there
    folder = Path(service.env["FORGETWATCH_CHECKPOINT_ROOTS"]) / "outage-step-5"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    service.stop()

    first = service.client()  # the trainer, while the service is down
    first.run("outage", base_model=service.base_model)
    first.samples(5, [{"prompt": "a", "response": "b"}])
    first.checkpoint(5, folder)
    first.close(timeout=1.0)  # returns with the calls undelivered (a close that waited for them would hang)
    assert first.stats["pending"] == 3
    journals = list((tmp_path / "cache" / "forgetwatch" / "journal").glob("outage-*.jsonl"))
    assert len(journals) == 1

    service.start()
    second = service.client()  # the restarted trainer replays its predecessor's calls first
    second.run("outage", base_model=service.base_model)
    second.samples(6, [{"prompt": "c", "response": "d"}])
    assert second.flush(30)
    second.close()
    assert not journals[0].exists()
    assert prompts(service, "outage") == ["a", "c"]
    checkpoints = service.get("/v1/runs/outage/checkpoints")
    assert [(c["step"], c["uri"]) for c in checkpoints] == [(5, str(folder.resolve()))]


def test_replaying_a_delivered_journal_stores_nothing_twice(service: Service, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    first = ForgetwatchClient(dead_url(), service.token, journal_path=journal)  # cannot reach the service
    first.run("replayed", base_model=service.base_model)
    first.samples(1, [{"prompt": f"p{i}", "response": "r"} for i in range(3)])
    first.close(timeout=0.5)
    kept = tmp_path / "kept.jsonl"
    shutil.copy(journal, kept)

    second = service.client(journal_path=journal)  # replays it at once
    assert second.flush(30)
    second.close()
    assert not journal.exists()
    shutil.copy(kept, journal)  # as if the trainer died after delivering, before marking it done
    third = service.client(journal_path=journal)
    assert third.flush(30)
    third.close()
    assert third.stats["sent"] == 2
    assert prompts(service, "replayed") == ["p0", "p1", "p2"]
    assert [r["name"] for r in service.get("/v1/runs")].count("replayed") == 1


@pytest.mark.timeout(20)
def test_calls_never_wait_on_a_service_that_hangs(tmp_path: Path) -> None:
    """The sender is stuck in its first request (the service accepts and never answers; the request
    timeout is 120 s): if a call waited on it, this test would time out instead of finishing."""
    with socket.socket() as hanging:  # accepts connections (backlog), never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(16)
        hanging.settimeout(15)
        client = ForgetwatchClient(f"http://127.0.0.1:{hanging.getsockname()[1]}", "fw_token",
                                   journal_path=tmp_path / "journal.jsonl", queue_size=100, timeout=120)
        client.run("down", base_model="/base")
        connection, _ = hanging.accept()  # the sender has connected: from here on it waits for an answer
        with connection:
            for i in range(1000):
                client.samples(i, [{"prompt": "p" * 200, "response": "r" * 200}])
            client.close(timeout=0.5)
    assert client.stats["pending"] == 1001 and client.stats["dropped"] == 0
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 1001


def test_close_is_bounded_when_the_service_hangs(tmp_path: Path) -> None:
    with socket.socket() as hanging:  # accepts connections (backlog), never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(16)
        hanging.settimeout(15)
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}"
        client = ForgetwatchClient(url, "fw_token", journal_path=tmp_path / "journal.jsonl", timeout=120)
        client.run("hang", base_model="/base")
        client.samples(1, [("a", "b")])
        connection, _ = hanging.accept()  # the sender is now waiting on the first request
        with connection:
            started = time.monotonic()
            client.close(timeout=1.0)
            # Bounded by close's timeout, not by the 120 s request timeout (a wide margin: no load flakes).
            assert time.monotonic() - started < 30
    assert client.stats["pending"] == 2
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 2


def test_conflicting_checkpoint_is_dropped_with_a_warning_and_the_queue_goes_on(
    service: Service, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = Path(service.env["FORGETWATCH_CHECKPOINT_ROOTS"])
    for name in ("a", "b"):
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(b"x")
    client = service.client(journal_path=tmp_path / "journal.jsonl")
    with caplog.at_level(logging.WARNING, logger="forgetwatch.client"):
        client.run("conflict", base_model=service.base_model)
        client.checkpoint(1, root / "a")
        client.checkpoint(1, root / "b")
        client.samples(1, [("after", "conflict")])
        assert not client.flush(30)  # something was dropped
        client.close()
    assert client.stats["dropped"] == 1
    assert "already registered" in caplog.text and "step=1" in caplog.text
    assert prompts(service, "conflict") == ["after"]


def test_checkpoint_upload_streams_top_level_files(service: Service, tmp_path: Path) -> None:
    folder = tmp_path / "trainer-disk" / "checkpoint-7"
    (folder / "nested").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 100_000)
    (folder / "config.json").write_text("{}")
    (folder / "optimizer.pt").write_bytes(b"o")
    (folder / "nested" / "ignored.bin").write_bytes(b"n")
    (folder / ".hidden").write_bytes(b"h")
    client = service.client(journal_path=tmp_path / "journal.jsonl")
    client.run("uploaded", base_model=service.base_model)
    client.checkpoint(7, folder, upload=True, skip=["optimizer.pt"])
    assert client.flush(30)
    client.close()
    checkpoint = service.get("/v1/runs/uploaded/checkpoints/7")
    stored = Path(checkpoint["uri"])
    assert sorted(p.name for p in stored.iterdir()) == ["config.json", "model.safetensors"]
    assert checkpoint["size_bytes"] == 100_002


def test_blocking_mode_raises_with_the_services_detail(service: Service, tmp_path: Path) -> None:
    client = service.client(blocking=True)
    created = client.run("blocking", base_model=service.base_model)
    assert created["name"] == "blocking"
    with pytest.raises(ForgetwatchError) as refused:
        client.checkpoint(1, tmp_path / "outside-the-roots")
    assert refused.value.status_code == 403 and "FORGETWATCH_CHECKPOINT_ROOTS" in refused.value.detail
    with pytest.raises(ForgetwatchError) as remote:  # an s3:// URI is sent as given, not made a local path
        client.checkpoint(1, "s3://models/elsewhere/checkpoint-1")
    assert remote.value.status_code == 403 and "'s3://models/elsewhere/checkpoint-1'" in remote.value.detail
    status = client.status()
    assert status is not None and (status.run, status.last_step, status.forecast, status.detection) == (
        "blocking", None, None, None)
    assert status.alarm is None
    client.close()


def test_importing_the_client_pulls_no_server_or_model_code() -> None:
    code = (
        "import sys, forgetwatch_client; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'torch', 'procrastinate', 'pydantic') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
