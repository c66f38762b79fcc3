"""Ingest load: N simulated trainers push sample batches and checkpoint registrations, against a floor.

    python -m bench.ingest [--trainers 50] [--seconds 20] [--api-workers N] [--no-busy]

Against an external PostgreSQL (FORGETWATCH_BENCH_DATABASE_URL, default the server at 127.0.0.1:5432;
a fresh database is created and dropped), in one run:

1. the floor: a bare FastAPI + psycopg app (`floor_app`, as many processes as the service) whose one
   endpoint inserts one row per request into the same database, under the same closed-loop load;
2. the service with one API process per core (``--api-workers``) and no workers (idle), like for like with the floor: each
   request stores one sample row (with an Idempotency-Key, as the trainer client sends it);
3. the same service under a trainer's mix: batches of 20 sample items, with a checkpoint registration
   every tenth request;
4. unless `--no-busy`: the mix with two workers busy on a large parameter-drift job (busy).

The trainers are async clients in 2 load processes. Every acknowledged sample item is looked up in
the database afterwards: `lost` must be 0. Last line, the like-for-like phase against the floor (same
load, same processes, one row per request, nothing else running):
`ingest rps=N p99_ms=M floor_rps=F vs_floor=N/F lost=0 errors=E` (errors and losses of every phase; the
mix and busy phases are printed above it, the mix with its own ratio to the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool

FORGETWATCH = str(Path(sys.executable).with_name("forgetwatch"))

@dataclass(frozen=True)
class Workload:
    """What each trainer sends: `items` sample rows per request, a checkpoint every `checkpoint_every`-th."""

    items: int
    checkpoint_every: int | None


ONE_ROW = Workload(items=1, checkpoint_every=None)  # the floor's request, through the service
TRAINER_MIX = Workload(items=20, checkpoint_every=10)


def floor_app():
    """The floor: FastAPI and a psycopg pool, one INSERT of one row per request, nothing else."""
    pool = AsyncConnectionPool(os.environ["FLOOR_DATABASE_URL"], min_size=4, max_size=20, open=False,
                               kwargs={"autocommit": True})

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def ready() -> dict:
        return {"status": "ok"}

    @app.post("/rows", status_code=202)
    async def insert_row(request: Request) -> dict:
        row = await request.json()
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO floor_rows (run, step, prompt, response) VALUES (%s, %s, %s, %s)",
                               (row["run"], row["step"], row["prompt"], row["response"]))
        return {"accepted": 1}

    return app


async def _trainer(base: str, token: str, index: int, seconds: float, checkpoint: str | None,
                   workload: Workload) -> dict:
    """One closed-loop client; `checkpoint` None: the floor's one-row requests."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies, errors, acked = [], 0, 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        run = f"bench-{uuid.uuid4().hex[:8]}-{index}"
        if checkpoint is not None:
            await client.post("/v1/runs", json={"name": run, "base_model": checkpoint, "method": "sft"})
        deadline = time.monotonic() + seconds
        step = 0
        while time.monotonic() < deadline:
            step += 1
            items = [{"prompt": f"p{i}", "response": f"r{step}-{i}"} for i in range(workload.items)]
            start = time.perf_counter()
            try:
                if checkpoint is None:
                    response = await client.post("/rows", json={"run": run, "step": step, **items[0]})
                    acked += response.status_code == 202
                elif workload.checkpoint_every and step % workload.checkpoint_every == 0:
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


def _load_process(base: str, token: str, first: int, count: int, seconds: float, checkpoint: str | None,
                  workload: Workload, out) -> None:
    async def main() -> list[dict]:
        return await asyncio.gather(*[_trainer(base, token, first + i, seconds, checkpoint, workload)
                                      for i in range(count)])

    out.put(asyncio.run(main()))


def run_load(base: str, token: str, trainers: int, seconds: float, checkpoint: str | None,
             workload: Workload = ONE_ROW) -> list[dict]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    half = trainers // 2
    procs = [multiprocessing.Process(target=_load_process,
                                     args=(base, token, start, n, seconds, checkpoint, workload, queue))
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


def start_cli(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([FORGETWATCH, *args], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_floor(libpq: str, trainers: int, seconds: float, processes: int, log: Path) -> float:
    """Requests per second of `floor_app` under the same load, in its own processes."""
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("CREATE TABLE floor_rows (id bigserial PRIMARY KEY, run text NOT NULL, step int NOT NULL, "
                     "prompt text NOT NULL, response text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.ingest:floor_app", "--factory", "--port", str(port),
             "--workers", str(processes), "--log-level", "warning"],
            env={**os.environ, "FLOOR_DATABASE_URL": libpq}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_ready(base)
        results = run_load(base, "", trainers, seconds, None)
    finally:
        stop_process(proc)
    rps, _, errors = summarize("floor (one row per request)", results, seconds)
    with psycopg.connect(libpq) as conn:
        stored = conn.execute("SELECT count(*) FROM floor_rows").fetchone()[0]
    if errors or stored < sum(r["acked"] for r in results):
        raise SystemExit(f"the floor failed: {errors} errors, {stored} rows stored")
    return rps


def wait_ready(base: str, timeout: float = 120) -> None:
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
    parser.add_argument("--api-workers", type=int, default=os.cpu_count() or 1,
                        help="API processes of the service and of the floor (default: one per core, as deployed)")
    parser.add_argument("--no-busy", action="store_true", help="skip the phase with busy drift workers")
    args = parser.parse_args()

    admin = os.environ.get("FORGETWATCH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"fw_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    libpq = admin.rsplit("/", 1)[0] + "/" + db
    url = libpq.replace("postgresql://", "postgresql+psycopg://")
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-ingest-"))
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": url, "FORGETWATCH_DATA_DIR": str(tmp / "data"),
           "FORGETWATCH_CHECKPOINT_ROOTS": str(tmp / "ckpts"), "FORGETWATCH_SPECTRAL": "false",
           "FORGETWATCH_LOG_LEVEL": "warning"}
    subprocess.run([FORGETWATCH, "migrate"], env=env, check=True, capture_output=True)
    token = subprocess.run([FORGETWATCH, "token", "create", "--name", "bench", "--scope", "write"], env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    _big_checkpoint(tmp / "ckpts" / "big", gib=4)
    floor_rps = measure_floor(libpq, args.trainers, args.seconds, args.api_workers, tmp / "floor.log")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = [start_cli(["serve", "--no-worker", "--port", str(port), "--workers", str(args.api_workers)], env,
                    tmp / "api.log")]
    try:
        wait_ready(base)
        checkpoint = str(tmp / "ckpts" / "big")
        one_row = run_load(base, token, args.trainers, args.seconds, checkpoint, ONE_ROW)
        rps, one_row_p99, errors = summarize("idle, one sample row per request (like the floor)", one_row,
                                             args.seconds)
        idle = run_load(base, token, args.trainers, args.seconds, checkpoint, TRAINER_MIX)
        mix_rps, idle_p99, mix_errors = summarize("idle, trainer mix (20-item batches, a checkpoint every 10th)",
                                                  idle, args.seconds)
        errors += mix_errors
        print(f"trainer mix vs_floor = {mix_rps / floor_rps:.2f}")
        busy: list[dict] = []
        if not args.no_busy:
            procs += [start_cli(["worker", "--queues", "params"], env, tmp / f"worker{i}.log") for i in range(2)]
            time.sleep(10)  # workers up and streaming the big checkpoints queued in the idle phase
            busy = run_load(base, token, args.trainers, args.seconds, checkpoint, TRAINER_MIX)
            _, busy_p99, busy_errors = summarize("busy (2 workers on 4 GiB checkpoints)", busy, args.seconds)
            errors += busy_errors
            print(f"busy_p99/idle_p99 = {busy_p99 / idle_p99:.2f}")
        with psycopg.connect(libpq) as conn:
            running = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'").fetchone()[0]
            lost = lost_items(conn, one_row + idle + busy)
        if busy:
            print(f"drift jobs running at the end of the busy phase: {running}")
        print(f"ingest rps={rps:.0f} p99_ms={one_row_p99:.0f} floor_rps={floor_rps:.0f} vs_floor={rps / floor_rps:.2f} "
              f"lost={lost} errors={errors}")
    finally:
        for p in procs:
            stop_process(p)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
