"""The loop helpers in a real two-process job (torchrun, CPU, gloo): a plain PyTorch DDP loop and an
accelerate loop. Rank 0 alone reports and asks the service; every rank stops at the step it decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["plain", "accelerate"])
def test_every_rank_of_a_loop_stops_at_the_step_rank_zero_decides(tmp_path: Path, kind: str) -> None:
    if kind == "accelerate":
        pytest.importorskip("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    job = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "integration" / "loop_stop_job.py"), str(tmp_path), kind],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert job.returncode == 0, job.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert [r["step"] for r in ranks] == [4, 4]  # stopped together at the first alarm, not at step 40
    reported, silent = ((tmp_path / f"journal-{r}.jsonl").read_text() for r in (0, 1))
    assert "step-2" in reported and "step-4" in reported and "loss" in reported  # rank 0: checkpoints, metrics
    assert "step-2" not in silent and "loss" not in silent  # rank 1 never talks to the service
    assert (tmp_path / "step-4" / "config.json").is_file()
