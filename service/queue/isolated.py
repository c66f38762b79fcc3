"""Reading checkpoint tensors in a child process.

Parameter drift reads tensors through memory maps (copy-free, at disk speed). If a file shrinks while it
is mapped — a trainer re-saving a checkpoint in place, a cleanup deleting it — the next read of a
vanished page kills the reading process with SIGBUS, which Python cannot catch. Run in a child, that
read costs the child only: the job fails with a reason and the worker lives on.

Children come from a fork server that has the drift code imported already, so a new child starts in
milliseconds; each worker thread keeps its own child, so one crash fails only that thread's job.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from drift.confined import CheckpointError

T = TypeVar("T")

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["drift.params"])
_local = threading.local()


class CheckpointChanged(CheckpointError):
    """The reading child died (SIGBUS or killed): the files changed or vanished while they were read."""


def run_isolated(function: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """`function(*args, **kwargs)` in this thread's child process; its exceptions come back as they are.
    Raises CheckpointChanged when the child dies instead of answering."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = ProcessPoolExecutor(max_workers=1, mp_context=_context)
    try:
        return pool.submit(function, *args, **kwargs).result()
    except BrokenProcessPool:
        _local.pool = None
        pool.shutdown(wait=False, cancel_futures=True)
        raise CheckpointChanged(
            "the checkpoint's files changed or vanished while they were read (re-saved in place, or deleted?); "
            "register a checkpoint whose files are no longer written to"
        ) from None
