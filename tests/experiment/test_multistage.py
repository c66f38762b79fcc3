"""The multi-stage corpus and the pre-flight bench on it, at toy sizes (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import preflight as bench
from experiment.multistage import StageConfig, write_corpus
from experiment.tasks import TASKS

TOY = StageConfig(pretrain_steps=3, stage_steps=2, batch_size=8, n_probe=8, n_preview=8)


@pytest.mark.timeout(300)
def test_a_corpus_run_has_a_row_per_stage_and_the_bench_prints_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_corpus(tmp_path, ["tiny-gpt2-char", "micro-qwen2-char"], [0], TOY)
    run = json.loads(paths[0].read_text())
    assert sorted(s["task"] for s in run["stages"]) == sorted(TASKS)
    assert len(run["accuracy"]) == len(run["loglik"]) == len(TASKS) + 1
    assert all(len(row) == len(TASKS) for row in run["loglik"])
    assert all(len(s["prompts"]) == 8 for s in run["stages"])
    assert write_corpus(tmp_path, ["tiny-gpt2-char"], [0], TOY) == paths[:1]  # an existing run is kept
    capsys.readouterr()
    bench.main(["--corpus", str(tmp_path), "--metric", "loglik"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "2 runs" in lines[0]
    # 2 runs x 4 stages x 3 retention sets each
    assert lines[-1].startswith("preflight pairs=24 spearman=") and " mae=" in lines[-1]
