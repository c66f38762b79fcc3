"""Reading checkpoint and model files in a child process.

Parameter drift reads tensors through memory maps (copy-free, at disk speed), and transformers keeps
a loaded model's weights mapped from its safetensors files. If a file shrinks while it is mapped — a
trainer re-saving a checkpoint in place, a cleanup deleting it — the next read of a vanished page
kills the reading process with SIGBUS, which Python cannot catch; a loader may also crash or be
killed for memory. Every job step that opens model files (parameter drift, probe evaluation, base
caches, sample references) runs in a child, so that costs the child only: the job fails with a
reason and the worker lives on.

Children come from a fork server that has the drift code imported already, so a new child starts in
about a second; transformers is imported by a child's first probe job. A child serves one call at a
time and is kept for the next call (a probe child keeps its base model loaded), so a worker holds at
most one child per concurrently running job; one crash fails only the job that was using that child.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from drift.confined import CheckpointError

T = TypeVar("T")

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["drift.params", "service.queue.probe_work"])
_idle: list[ProcessPoolExecutor] = []  # children free for the next call, the last used on top
_idle_lock = threading.Lock()
_child_threads: int | None = None  # compute threads of each child; None: the library defaults (all cores)


def share_cores(concurrency: int | None) -> int | None:
    """Give each child an equal share of this machine's cores for `concurrency` jobs at once (None: the
    library defaults again) and return it; idle children of another share are ended. Without a share
    every child's torch pool takes every core: two parameter jobs at once on two cores ran 2.4x slower
    than with one thread each (spinning thread pools fight for the cores)."""
    global _child_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = None if concurrency is None else max(1, cores // max(1, concurrency))
    with _idle_lock:
        if share != _child_threads:
            for pool in _idle:
                pool.shutdown(wait=False, cancel_futures=True)
            _idle.clear()
        _child_threads = share
    return share


def _limit_threads(threads: int | None) -> None:
    """In a new child: torch's intra-op pool (and so drift's own thread pools) at `threads`."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


class CheckpointChanged(CheckpointError):
    """The reading child died (SIGBUS or killed) instead of answering."""


def _take() -> ProcessPoolExecutor:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    return ProcessPoolExecutor(max_workers=1, mp_context=_context, initializer=_limit_threads,
                               initargs=(_child_threads,))


def _give_back(pool: ProcessPoolExecutor) -> None:
    with _idle_lock:
        _idle.append(pool)


def _call(function: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]) -> T:
    """In the child: an exception that cannot travel back (a Rust panic from a loader, an error
    class without a plain constructor) comes back as a RuntimeError naming it."""
    try:
        return function(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - whatever stops it travelling, send its name instead
            first = str(error).splitlines()[0] if str(error) else ""
            raise RuntimeError(f"{type(error).__name__}: {first}"[:500]) from None
        raise


def _end_broken(pool: ProcessPoolExecutor) -> str:
    """Shut a pool whose child died and say why it died. The pool notices a death by the result pipe's
    end-of-file, which can come before the fork server has reaped the child: its exit code is known
    only once the pool's manager thread has joined it, so wait for that thread first."""
    processes: list[Any] = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
    codes = [p.exitcode for p in processes if p.exitcode is not None]
    number = -codes[0] if codes and codes[0] < 0 else None
    if number == signal.SIGKILL:
        return ("the process reading the model files was killed (SIGKILL: out of memory?); give the worker more "
                "memory, run fewer jobs at once, or register a smaller model")
    name = signal.Signals(number).name if number in signal.valid_signals() else "no exit status"
    return (f"the checkpoint's files changed or vanished while they were read ({name}: re-saved in place, or "
            "deleted?); register a checkpoint whose files are no longer written to, and keep the run's base model "
            "files as they are")


def run_isolated(function: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """`function(*args, **kwargs)` in a child process; its exceptions come back as they are (one that
    cannot be pickled as a RuntimeError naming it). Arguments and results travel pickled: pass plain
    values. Raises CheckpointChanged when the child dies instead of answering."""
    pool = _take()
    future = pool.submit(_call, function, args, kwargs)
    try:
        result = future.result()
    except BrokenProcessPool:
        raise CheckpointChanged(_end_broken(pool)) from None
    except BaseException:
        if future.done():
            _give_back(pool)  # the function raised; its child is fine
        else:
            pool.shutdown(wait=False, cancel_futures=True)  # interrupted while the child still works
        raise
    _give_back(pool)
    return result
