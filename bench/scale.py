"""Scale: a ~1 B-parameter checkpoint through the service, and probe analysis on a ~100 M model.

    python -m bench.scale [--layers 16] [--skip-params] [--skip-probes]

1. Parameter drift end to end. Writes once (cached under ``$TMPDIR/forgetwatch-bench-scale``) a
   Llama-architecture base and checkpoint in bf16 safetensors, two shards each with an index
   (vocabulary 32000 tied, hidden 2048, MLP 8192, 16 layers, 8 KV heads: 1.04 B parameters,
   2.1 GB per model; random weights, the checkpoint is the base plus 1 % Gaussian noise). Timed in
   this run, both starting with the files' pages dropped from the page cache
   (``posix_fadvise(DONTNEED)``), so both read from the disk:
     - read: one streaming read of all four shard files (16 MiB ``readinto`` chunks), timed before and
       after the checkpoint and averaged (the disk's speed drifts); the same read from a warm page
       cache is printed too;
     - e2e: a service (``forgetwatch serve --no-worker``) and one worker (``forgetwatch worker
       --queues params``) on a fresh database of the external PostgreSQL
       (FORGETWATCH_BENCH_DATABASE_URL, default the server at 127.0.0.1:5432); a run on the base,
       ``POST`` of the checkpoint, and the wall time until its parameter drift reads ``ready``
       (spectral at default settings: top-64 SVD of every matrix up to 2^26 elements).
   Registering the run queues the base's half of the spectral pass (``prepare_spectral_base``: the
   base's top-k SVD of every matrix, cached per base file), which a service runs while the trainer
   takes its first steps; the bench waits for it (``base_prepare_vs_read``: its wall time / read)
   and then times the checkpoint. ``param_e2e_vs_read = e2e / read``. ``worker_extra_rss_mb``: the
   peak, during a second checkpoint's job (the same file posted at step 2, read from the disk again;
   sampling /proc every 20 ms during the timed one slowed it by ~40 % on two cores), of the anonymous
   memory of the worker and every child it starts, minus the value before the first checkpoint's
   ``POST`` (what the children kept from the first job counts). Each process counts its proportional share
   (``Pss_Anon``): a child forked from the worker's fork server shares the fork server's pages
   (torch, numba) until it writes them, and ``RssAnon`` would count them once per process. The
   safetensors files are memory-mapped: their pages are file-backed and not counted.
2. Probe analysis in this process. A Llama of ~110 M parameters (hidden 768, 12 layers, vocabulary
   32000) built from a config, a word-level tokenizer, 64 probes of 32 prompt tokens and 64
   reference tokens; the base's cache is built once. Timed, best of three interleaved rounds, the
   model already loaded in both:
     - probe: ``evaluate_checkpoint`` (forward KL, total variation, entropy, log-likelihood change
       with its paired-bootstrap interval) as a probe job runs it;
     - forward: one plain ``model(input_ids)`` pass over the same padded batches of 16.
   ``probe_vs_forward = probe / forward``; ``probe_tokens_per_s``: scored completion tokens per second
   of the probe analysis. Probes with a checkable answer add greedy decoding on top (not timed here:
   its cost is the answer's length in incremental decoding steps, whatever the monitor).

Last line: ``scale param_e2e_vs_read=… worker_extra_rss_mb=… probe_vs_forward=… probe_tokens_per_s=…
base_prepare_vs_read=…``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Self

import httpx
import numpy as np
import psycopg
import torch

from bench.ingest import FORGETWATCH, free_port, start_cli, stop_process, wait_ready

ROOT = Path(tempfile.gettempdir()) / "forgetwatch-bench-scale"
LLAMA_1B = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True,
            "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}
CHUNK = 16 << 20


def _llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    v, h, f = LLAMA_1B["vocab_size"], LLAMA_1B["hidden_size"], LLAMA_1B["intermediate_size"]
    kv = h * LLAMA_1B["num_key_value_heads"] // LLAMA_1B["num_attention_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                   p + "mlp.down_proj.weight": (h, f)}
    return shapes


def write_pair(layers: int) -> tuple[Path, Path]:
    """The base and the checkpoint (base + 1 % noise), two shards each, written once and reused."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder = ROOT / f"llama-{layers}l"
    base, ckpt = folder / "base", folder / "checkpoint"
    if (folder / "done").exists():
        return base, ckpt
    shapes = _llama_shapes(layers)
    names = list(shapes)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    gen = torch.Generator().manual_seed(0)
    config = LlamaConfig(**{**LLAMA_1B, "num_hidden_layers": layers})
    for out in (base, ckpt):
        out.mkdir(parents=True, exist_ok=True)
        config.to_json_file(out / "config.json")
    weight_map: dict[str, str] = {}
    for n, shard in enumerate(shards, start=1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        base_tensors, ckpt_tensors = {}, {}
        for name in shard:
            shape = shapes[name]
            w = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02
            base_tensors[name] = w.to(torch.bfloat16)
            ckpt_tensors[name] = (w + 0.01 * w.abs().mean() * torch.randn(shape, generator=gen)).to(torch.bfloat16)
            weight_map[name] = file
        save_file(base_tensors, base / file, metadata={"format": "pt"})
        save_file(ckpt_tensors, ckpt / file, metadata={"format": "pt"})
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    for out in (base, ckpt):
        (out / "model.safetensors.index.json").write_text(index)
    (folder / "done").touch()
    return base, ckpt


def stream_read(folders: tuple[Path, ...]) -> tuple[float, int]:
    """Seconds for one sequential read of every safetensors file in `folders`, and the bytes read."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    for folder in folders:
        for file in sorted(folder.glob("*.safetensors")):
            with open(file, "rb", buffering=0) as handle:
                while n := handle.readinto(view):
                    total += n
    return time.perf_counter() - start, total


def evict(folders: tuple[Path, ...]) -> None:
    """Drop the files' pages from the page cache (``POSIX_FADV_DONTNEED``; clean pages need no privilege),
    so the next read of them comes from the disk."""
    for folder in folders:
        for file in folder.glob("*.safetensors"):
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _anon_kb(pids: list[int]) -> int:
    """Anonymous memory of ``pids``, each process's proportional share of shared pages (``Pss_Anon``)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss_Anon:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class TreeRssSampler:
    """Peak anonymous memory (``Pss_Anon``) of a process tree, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _anon_kb(_tree(self.pid)))
            self._stop.wait(0.02)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _post_and_wait(client: httpx.Client, *, step: int, uri: Path) -> dict:
    """POST checkpoint ``step`` and return its parameter drift once it is ready (exits otherwise)."""
    client.post("/v1/runs/scale/checkpoints", json={"step": step, "uri": str(uri)}).raise_for_status()
    while (body := client.get(f"/v1/runs/scale/checkpoints/{step}/param-drift").json())["status"] not in (
            "ready", "failed", "skipped"):
        time.sleep(0.1)
    if body["status"] != "ready":
        raise SystemExit(f"parameter drift of step {step} ended {body['status']}: {body['error']}")
    return body


def param_e2e(base: Path, ckpt: Path) -> tuple[float, float, float, float]:
    """(e2e seconds, read seconds, base preparation seconds, worker extra memory MiB) of one checkpoint
    through the service."""
    admin = os.environ.get("FORGETWATCH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"fw_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    url = (admin.rsplit("/", 1)[0] + "/" + db).replace("postgresql://", "postgresql+psycopg://")
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-scale-"))
    env = {**os.environ, "FORGETWATCH_DATABASE_URL": url, "FORGETWATCH_DATA_DIR": str(tmp / "data"),
           "FORGETWATCH_CHECKPOINT_ROOTS": str(base.parent), "FORGETWATCH_LOG_LEVEL": "warning"}
    procs = []
    try:
        subprocess.run([FORGETWATCH, "migrate"], env=env, check=True, capture_output=True)
        token = subprocess.run([FORGETWATCH, "token", "create", "--name", "bench", "--scope", "write"], env=env,
                               check=True, capture_output=True, text=True).stdout.strip()
        port = free_port()
        url_base = f"http://127.0.0.1:{port}"
        procs.append(start_cli(["serve", "--no-worker", "--port", str(port)], env, tmp / "api.log"))
        worker = start_cli(["worker", "--queues", "params"], env, tmp / "worker.log")
        procs.append(worker)
        wait_ready(url_base)
        stream_read((base, ckpt))
        hot_s, read_bytes = stream_read((base, ckpt))
        evict((base, ckpt))  # the read and the service both start from the disk
        first_read_s, _ = stream_read((base, ckpt))
        evict((base, ckpt))
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url_base, headers=headers, timeout=60) as client:
            start = time.perf_counter()
            client.post("/v1/runs", json={"name": "scale", "base_model": str(base), "method": "sft"}).raise_for_status()
            # the first job cuts the base into parts and queues the others before it computes its own
            while not (jobs := client.get("/v1/jobs", params={"run": "scale", "kind": "prepare_spectral_base"}).json()) \
                    or any(j["status"] in ("todo", "doing") for j in jobs):
                time.sleep(0.2)
            prepare_s = time.perf_counter() - start
            if failed := [j["status"] for j in jobs if j["status"] != "succeeded"]:
                raise SystemExit(f"the base's spectral preparation ended {failed}: see {tmp / 'worker.log'}")
            print(f"base prepared for the spectral pass in {prepare_s:.1f} s ({len(jobs)} jobs)", flush=True)
            evict((base, ckpt))
            time.sleep(2)  # the worker is idle and connected before its memory is read
            idle_kb = _anon_kb(_tree(worker.pid))
            start = time.perf_counter()
            body = _post_and_wait(client, step=1, uri=ckpt)
            e2e_s = time.perf_counter() - start
            # This disk's speed drifts (0.5-1.4 GiB/s within minutes): the read is timed again right
            # after the checkpoint, and the ratio uses the mean of the two reads around it.
            evict((base, ckpt))
            last_read_s, _ = stream_read((base, ckpt))
            read_s = (first_read_s + last_read_s) / 2
            print(f"read: {read_bytes / 2**30:.2f} GiB in {first_read_s:.2f} s and {last_read_s:.2f} s from "
                  f"the disk ({read_bytes / read_s / 2**30:.2f} GiB/s), {hot_s:.2f} s from the page cache",
                  flush=True)
            # Memory on a second checkpoint (the same file at step 2, from the disk again): the sampler
            # reads /proc every 20 ms, and on two cores that slowed the timed checkpoint by ~40 %. Its
            # peak counts against the idle worker before the first checkpoint, so what the job children
            # kept from the first one counts too.
            evict((base, ckpt))
            with TreeRssSampler(worker.pid) as sampler:
                _post_and_wait(client, step=2, uri=ckpt)
        nss = body["global"]["normalized_spectral_shift"]
        print(f"param e2e: {e2e_s:.1f} s, relative_l2={body['global']['relative_l2_distance']:.4f} "
              f"normalized_spectral_shift={nss}", flush=True)
        print(f"worker memory: {idle_kb / 1024:.0f} MB idle, {sampler.peak_kb / 1024:.0f} MB peak", flush=True)
        return e2e_s, read_s, prepare_s, max(0, sampler.peak_kb - idle_kb) / 1024
    finally:
        for proc in procs:
            stop_process(proc)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def probe_timing(n_probes: int = 64, prompt: int = 32, completion: int = 64) -> tuple[float, float]:
    """(probe_vs_forward, probe_tokens_per_s) on a ~110 M-parameter Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.probe_kl import make_tokenizer
    from drift.base_cache import build_base_cache
    from drift.forgetting import evaluate_checkpoint
    from drift.probes import ProbeItem, ProbeSet

    torch.manual_seed(0)
    vocab = 32000
    tokenizer = make_tokenizer(vocab)
    config = LlamaConfig(vocab_size=vocab, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=256,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    base = LlamaForCausalLM(config).eval()
    ckpt = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p, q in zip(base.parameters(), ckpt.parameters(), strict=True):
            q.copy_(p + 0.01 * p.abs().mean() * torch.randn_like(p))
    params = sum(p.numel() for p in base.parameters())
    gen = torch.Generator().manual_seed(1)
    words = torch.randint(2, vocab, (n_probes, prompt + completion), generator=gen)
    items = [ProbeItem(prompt=" ".join(f"w{t}" for t in row[:prompt].tolist()),
                       reference=" " + " ".join(f"w{t}" for t in row[prompt:].tolist())) for row in words]
    probe_set = ProbeSet(name="scale", domain="ood", items=tuple(items))
    cache = build_base_cache(base, tokenizer, probe_set, k=64)
    ids = cache.sequences()
    batches = [torch.tensor([list(p) + list(c) for p, c in ids[i:i + 16]]) for i in range(0, len(ids), 16)]

    @torch.no_grad()
    def forward() -> None:
        for batch in batches:
            ckpt(input_ids=batch)

    probe_s, forward_s = [], []
    for _ in range(3):
        start = time.perf_counter()
        evaluate_checkpoint(ckpt, tokenizer, cache, random_state=0)
        probe_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        forward()
        forward_s.append(time.perf_counter() - start)
    tokens = int(cache.completion_lengths.sum())
    print(f"probe: {params / 1e6:.0f} M parameters, {n_probes} probes, {tokens} completion tokens; "
          f"probe {min(probe_s):.2f} s, forward {min(forward_s):.2f} s", flush=True)
    return min(probe_s) / min(forward_s), tokens / min(probe_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=LLAMA_1B["num_hidden_layers"])
    parser.add_argument("--skip-params", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    e2e_vs_read = prepare_vs_read = extra_mb = probe_ratio = tokens_per_s = float("nan")
    if not args.skip_params:
        base, ckpt = write_pair(args.layers)
        e2e_s, read_s, prepare_s, extra_mb = param_e2e(base, ckpt)
        e2e_vs_read, prepare_vs_read = e2e_s / read_s, prepare_s / read_s
    if not args.skip_probes:
        probe_ratio, tokens_per_s = probe_timing()
    print(f"scale param_e2e_vs_read={e2e_vs_read:.2f} worker_extra_rss_mb={extra_mb:.0f} "
          f"probe_vs_forward={probe_ratio:.2f} probe_tokens_per_s={tokens_per_s:.0f} "
          f"base_prepare_vs_read={prepare_vs_read:.1f}")


if __name__ == "__main__":
    main()
