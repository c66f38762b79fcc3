"""`on_risk="stop"` in a real two-process DDP job (torchrun, CPU, gloo): rank 0 alone asks the service,
and every rank stops at the same step instead of leaving one waiting in a collective."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_rank_stops_at_the_step_rank_zero_decides(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    job = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "integration" / "ddp_stop_job.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert job.returncode == 0, job.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert [r["step"] for r in ranks] == [4, 4]  # stopped together at the first alarm, not at max_steps=40
