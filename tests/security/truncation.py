"""Readers for the truncation tests, importable by the reading child process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from drift.checkpoints import open_checkpoint


def truncate_while_mapped(path: str) -> float:
    """Map the tensor, then shrink the file under it (as a trainer re-saving in place does), then read."""
    with open_checkpoint(path) as checkpoint:
        array = checkpoint.array("weight")
        os.truncate(path, 64)
        return float(array.sum())


def total(path: str | Path) -> float:
    with open_checkpoint(path) as checkpoint:
        return float(checkpoint.array("weight").sum())


class TwoPartError(Exception):
    """An exception pickle cannot rebuild (its constructor takes two arguments)."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


def raise_two_part_error() -> None:
    raise TwoPartError("cannot", "travel")


def killed() -> None:
    """What the kernel's out-of-memory killer does to a loader."""
    os.kill(os.getpid(), signal.SIGKILL)


def bus_error() -> None:
    """What reading a vanished mapped page does, without the file work."""
    os.kill(os.getpid(), signal.SIGBUS)
