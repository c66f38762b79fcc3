"""Ingest load: N simulated trainers push sample batches and checkpoint registrations.

    python -m bench.ingest [--trainers 50] [--seconds 20] [--api-workers 4]

Starts the service against an external PostgreSQL (FORGETWATCH_BENCH_DATABASE_URL, default the
server at 127.0.0.1:5432; a fresh database is created and dropped), with several API processes,
then runs the trainers as async clients in 2 load processes, twice: with no workers (idle), then
with two workers busy on a large parameter-drift job (busy). Every acknowledged sample item is
looked up in the database afterwards: `lost` must be 0. Last line:
`ingest rps=N p99_ms=M lost=0 errors=E` (busy phase; the idle p99 is printed above it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

FORGETWATCH = str(Path(sys.executable).with_name("forgetwatch"))
ITEMS_PER_BATCH = 20


async def _trainer(base: str, token: str, index: int, seconds: float, checkpoint: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    latencies, errors, acked = [], 0, 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        run = f"bench-{uuid.uuid4().hex[:8]}-{index}"
        await client.post("/v1/runs", json={"name": run, "base_model": checkpoint, "method": "sft"})
        deadline = time.monotonic() + seconds
        step = 0
        while time.monotonic() < deadline:
            step += 1
            items = [{"prompt": f"p{i}", "response": f"r{step}-{i}"} for i in range(ITEMS_PER_BATCH)]
            start = time.perf_counter()
            try:
                if step % 10 == 0:
                    response = await client.post(f"/v1/runs/{run}/checkpoints", json={"step": step, "uri": checkpoint},
                                                 headers={"Idempotency-Key": uuid.uuid4().hex})
                else:
                    response = await client.post(f"/v1/runs/{run}/samples", json={"step": step, "items": items},
                                                 headers={"Idempotency-Key": uuid.uuid4().hex})
                    if response.status_code == 202:
                        acked += len(items)
                ok = response.status_code in (200, 201, 202)
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok
    return {"run": run, "latencies": latencies, "errors": errors, "acked": acked}


def _load_process(base: str, token: str, first: int, count: int, seconds: float, checkpoint: str, out) -> None:
    async def main() -> list[dict]:
        return await asyncio.gather(*[_trainer(base, token, first + i, seconds, checkpoint) for i in range(count)])

    out.put(asyncio.run(main()))


def run_load(base: str, token: str, trainers: int, seconds: float, checkpoint: str) -> list[dict]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    half = trainers // 2
    procs = [multiprocessing.Process(target=_load_process, args=(base, token, start, n, seconds, checkpoint, queue))
             for start, n in ((0, half), (half, trainers - half))]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in queue.get()]
    for p in procs:
        p.join()
    return results


def summarize(label: str, results: list[dict], seconds: float) -> tuple[float, float, int]:
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = sum(r["errors"] for r in results)
    rps = len(latencies) / seconds
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
    print(f"{label}: requests={len(latencies)} rps={rps:.0f} p50_ms={p50:.1f} p99_ms={p99:.1f} "
          f"errors={errors} error_rate={errors / max(1, len(latencies)):.4f}", flush=True)
    return rps, p99, errors


def lost_items(conn: psycopg.Connection, results: list[dict]) -> int:
    lost = 0
    for r in results:
        stored = conn.execute("SELECT count(*) FROM samples s JOIN runs r ON r.id = s.run_id WHERE r.name = %s",
                              (r["run"],)).fetchone()[0]
        lost += max(0, r["acked"] - stored)
    return lost


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([FORGETWATCH, *args], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ready(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready")


def _big_checkpoint(folder: Path, gib: float) -> None:
    """A zero-filled, sparse safetensors model: the workers stream it without using disk."""
    folder.mkdir(parents=True)
    n = int(gib * 2**30) // 4 // 4096
    header = json.dumps({"w": {"dtype": "F32", "shape": [n, 4096], "data_offsets": [0, n * 4096 * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(folder / "model.safetensors", "wb") as out:
        out.write(len(header).to_bytes(8, "little") + header)
        out.truncate(8 + len(header) + n * 4096 * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--api-workers", type=int, default=4)
    args = parser.parse_args()

    admin = os.environ.get("FORGETWATCH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"fw_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + db
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-ingest-"))
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": url, "FORGETWATCH_DATA_DIR": str(tmp / "data"),
           "FORGETWATCH_CHECKPOINT_ROOTS": str(tmp / "ckpts"), "FORGETWATCH_SPECTRAL": "false",
           "FORGETWATCH_LOG_LEVEL": "warning"}
    subprocess.run([FORGETWATCH, "migrate"], env=env, check=True, capture_output=True)
    token = subprocess.run([FORGETWATCH, "token", "create", "--name", "bench", "--scope", "write"], env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    _big_checkpoint(tmp / "ckpts" / "big", gib=4)
    port = 8790
    base = f"http://127.0.0.1:{port}"
    procs = [_start(["serve", "--no-worker", "--port", str(port), "--workers", str(args.api_workers)], env,
                    tmp / "api.log")]
    try:
        _wait_ready(base)
        checkpoint = str(tmp / "ckpts" / "big")
        idle = run_load(base, token, args.trainers, args.seconds, checkpoint)
        _, idle_p99, _ = summarize("idle", idle, args.seconds)

        procs += [_start(["worker", "--queues", "params"], env, tmp / f"worker{i}.log") for i in range(2)]
        time.sleep(10)  # workers up and streaming the big checkpoints queued in the idle phase
        busy = run_load(base, token, args.trainers, args.seconds, checkpoint)
        rps, busy_p99, errors = summarize("busy (2 workers on 4 GiB checkpoints)", busy, args.seconds)
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            running = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'").fetchone()[0]
            lost = lost_items(conn, idle + busy)
        print(f"drift jobs running at the end of the busy phase: {running}")
        print(f"busy_p99/idle_p99 = {busy_p99 / idle_p99:.2f} (target <= 2)")
        print(f"ingest rps={rps:.0f} p99_ms={busy_p99:.0f} lost={lost} errors={errors + sum(r['errors'] for r in idle)}")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
