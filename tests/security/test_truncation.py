"""A checkpoint file shrunk while a worker has it memory-mapped kills the reader with SIGBUS. Parameter
drift reads in a child process, so that costs a failed analysis with a reason, not the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from service.queue.isolated import CheckpointChanged, run_isolated
from tests.security.truncation import bus_error, killed, raise_two_part_error, total, truncate_while_mapped

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(path: Path) -> Path:
    save_file({"weight": np.ones((1024, 1024), dtype=np.float32)}, str(path))
    return path


def test_the_attack_kills_a_process_that_reads_in_place(tmp_path: Path) -> None:
    victim = _checkpoint(tmp_path / "victim.safetensors")
    code = textwrap.dedent(f"""
        from tests.security.truncation import truncate_while_mapped
        truncate_while_mapped({str(victim)!r})
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -signal.SIGBUS


def test_reading_in_a_child_turns_the_crash_into_a_clear_error_and_goes_on(tmp_path: Path) -> None:
    victim = _checkpoint(tmp_path / "victim.safetensors")
    with pytest.raises(CheckpointChanged) as changed:
        run_isolated(truncate_while_mapped, str(victim))
    assert "changed or vanished while they were read (SIGBUS" in str(changed.value)
    healthy = _checkpoint(tmp_path / "healthy.safetensors")
    assert run_isolated(total, healthy) == 1024 * 1024  # a fresh child serves the next job
    with pytest.raises(FileNotFoundError):  # ordinary errors come back as they are
        run_isolated(os.stat, str(tmp_path / "missing"))


def test_a_child_killed_for_memory_is_named_and_an_error_that_cannot_travel_comes_back_as_its_name(
        tmp_path: Path) -> None:
    with pytest.raises(CheckpointChanged, match=r"killed \(SIGKILL: out of memory\?\)"):
        run_isolated(killed)
    with pytest.raises(RuntimeError, match="^TwoPartError: cannot travel$"):
        run_isolated(raise_two_part_error)
    assert run_isolated(total, _checkpoint(tmp_path / "healthy.safetensors")) == 1024 * 1024


def test_every_death_is_named_by_its_signal() -> None:
    """The pool can see a child's death (its result pipe closing) before the child's exit status is
    known; the reason must wait for the status. Before it did, 9 in 60 deaths came back unnamed."""
    reasons = []
    for _ in range(30):
        with pytest.raises(CheckpointChanged) as changed:
            run_isolated(bus_error)
        reasons.append(str(changed.value))
    assert all("(SIGBUS:" in reason for reason in reasons), [r for r in reasons if "(SIGBUS:" not in r][:1]
