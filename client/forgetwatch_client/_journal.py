"""The client's on-disk journal: calls not yet delivered, as JSON lines, so a service outage or a
trainer restart loses nothing.

Lines are `{"op": {...}}` (a call), `{"done": id}` (delivered or dropped) and
`{"uploaded": id, "file": name}` (one file of a checkpoint upload is on the service). Opening a journal
reads it (a torn last line from a crash is skipped), rewrites it with only the pending calls in call
order, and holds an exclusive lock on `<journal>.lock` so two live clients never share one journal.
Only the client's background threads touch the file (under `lock`), never the training loop.

Beside it: `<stem>.<pid>.jsonl`, the journal of a client that found the main one held by another live
client (adopted by the next client that opens the main journal once its owner is gone), and
`<stem>.refused.jsonl`, the calls the service refused, with its answer. Calls refused for the token
(401, 403) are sent again by the next client (the token may have been fixed); the others stay there
as a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("forgetwatch.client")


def default_journal_path(url: str, run: str) -> Path:
    """`$XDG_CACHE_HOME/forgetwatch/journal/<run>-<hash of url and run>.jsonl` (default ~/.cache)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(f"{url.rstrip('/')}\n{run}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", run)[:64]
    return cache / "forgetwatch" / "journal" / f"{readable}-{digest}.jsonl"


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


class Journal:
    """Append-only JSON lines. Ops are read back by their offset, so pending calls need not be held
    in memory. Every method takes `lock`."""

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.closed = False
        self._lock_fd = lock_fd
        self._file = open(path, "ab")  # noqa: SIM115 - held open for the client's lifetime
        self._reader = open(path, "rb")  # noqa: SIM115
        self._dirty = False

    @classmethod
    def open(cls, path: Path) -> tuple[Journal, list[tuple[int, str]]]:
        """Lock, load and compact the journal at `path`; returns it and the (offset, id) of its pending
        calls, oldest first. If another live client holds it, this process's own
        `<stem>.<pid>.jsonl` is used instead."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _try_lock(path)
        if lock_fd is None:
            alternative = path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
            log.warning(
                "action=journal_busy journal=%s using=%s (another live client holds it; the next client "
                "of this journal replays it once this process is gone)",
                path,
                alternative,
            )
            path = alternative
            lock_fd = _try_lock(path)
            offsets = _rewrite(path, _load(path))
            return cls(path, lock_fd), offsets
        adopted = _adopt_orphans(path)
        retried = _take_retryable_refusals(refused_path(path))
        pending = sorted(_load(path) + [op for ops, _ in adopted for op in ops] + retried, key=lambda op: op["seq"])
        offsets = _rewrite(path, pending)
        for _, orphan in adopted:
            orphan.unlink(missing_ok=True)
            orphan.with_name(orphan.name + ".lock").unlink(missing_ok=True)
        if adopted or retried:
            log.info("action=journal_adopted journal=%s orphans=%d refused_again=%d", path, len(adopted), len(retried))
        return cls(path, lock_fd), offsets

    def append_ops(self, ops: list[dict[str, Any]]) -> list[int]:
        """Append calls (written and flushed; fsync'd by `sync`); returns their offsets."""
        with self.lock:
            offsets = []
            for op in ops:
                offsets.append(self._file.tell())
                self._file.write(_line({"op": op}))
            self._file.flush()
            self._dirty = True
            return offsets

    def append_refused(self, op: dict[str, Any], status_code: int | None, detail: Any) -> None:
        """Keep a call the service refused, with its answer, in `<stem>.refused.jsonl`."""
        with self.lock, open(refused_path(self.path), "ab") as out:
            out.write(_line({"op": op, "status_code": status_code, "detail": detail}))
            out.flush()
            os.fsync(out.fileno())

    def append_done(self, op_id: str) -> None:
        self._append({"done": op_id})

    def append_uploaded(self, op_id: str, filename: str) -> None:
        self._append({"uploaded": op_id, "file": filename})

    def _append(self, record: dict[str, Any]) -> None:
        with self.lock:
            self._file.write(_line(record))
            self._file.flush()
            self._dirty = True

    def read_op(self, offset: int) -> dict[str, Any]:
        with self.lock:
            self._reader.seek(offset)
            return json.loads(self._reader.readline())["op"]

    def sync(self) -> None:
        """fsync what was appended since the last call."""
        with self.lock:
            if self._dirty and not self.closed:
                self._dirty = False
                os.fsync(self._file.fileno())

    def reset(self) -> None:
        """Everything in it was delivered: empty the file."""
        with self.lock:
            self._file.truncate(0)
            self._file.seek(0)
            self._dirty = True

    def close(self, *, remove: bool) -> None:
        """Sync and close; `remove` (nothing pending) deletes the file."""
        with self.lock:
            if self.closed:
                return
            self.sync()
            self.closed = True
            self._file.close()
            self._reader.close()
            if remove:
                self.path.unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock


def refused_path(journal: Path) -> Path:
    return journal.with_name(f"{journal.stem}.refused{journal.suffix}")


#: Refusals that a fixed or rotated token can cure: sent again by the next client.
RETRYABLE_REFUSALS = (401, 403)


def _adopt_orphans(path: Path) -> list[tuple[list[dict[str, Any]], Path]]:
    """Pending calls of `<stem>.<pid>.jsonl` journals whose client is gone (their lock is free)."""
    found: list[tuple[list[dict[str, Any]], Path]] = []
    if fcntl is None:
        return found  # without locks a live client's journal cannot be told from an orphan
    for orphan in sorted(path.parent.glob(f"{path.stem}.*{path.suffix}")):
        middle = orphan.name[len(path.stem) + 1 : -len(path.suffix)]
        if not middle.isdigit():
            continue
        lock_fd = _try_lock(orphan)
        if lock_fd is None:
            continue  # its client still runs
        try:
            found.append((_load(orphan), orphan))
        finally:
            os.close(lock_fd)
    return found


def _take_retryable_refusals(path: Path) -> list[dict[str, Any]]:
    """Remove the calls refused for their token from the refusals file and return them."""
    if not path.exists():
        return []
    keep, retry = [], []
    with open(path, "rb") as lines:
        for line in lines:
            try:
                record = json.loads(line)
                (retry if record.get("status_code") in RETRYABLE_REFUSALS else keep).append(record)
            except ValueError:
                continue
    if keep:
        log.warning("action=refused_calls_kept file=%s calls=%d (refused by the service for good; see the "
                    "file for each answer)", path, len(keep))
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(b"".join(_line(record) for record in keep))
        os.replace(temporary, path)
    else:
        path.unlink()
    return [record["op"] for record in retry]


def _try_lock(path: Path) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    ops: dict[str, dict[str, Any]] = {}
    skipped = 0
    with open(path, "rb") as lines:
        for line in lines:
            try:
                record = json.loads(line)
                if "op" in record:
                    ops[record["op"]["id"]] = record["op"]
                elif "done" in record:
                    ops.pop(record["done"], None)
                elif "uploaded" in record and record["uploaded"] in ops:
                    ops[record["uploaded"]].setdefault("uploaded", []).append(record["file"])
            except (ValueError, KeyError, TypeError):
                skipped += 1
    if skipped:
        log.warning("action=journal_lines_skipped journal=%s lines=%d (torn or corrupt)", path, skipped)
    return sorted(ops.values(), key=lambda op: op["seq"])  # a call in flight at close was written last


def _rewrite(path: Path, pending: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Atomically replace the journal with only its pending calls; their (offset, id)."""
    if not pending:
        path.unlink(missing_ok=True)
        return []
    temporary = path.with_name(path.name + ".tmp")
    offsets = []
    with open(temporary, "wb") as out:
        for op in pending:
            offsets.append((out.tell(), op["id"]))
            out.write(_line({"op": op}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return offsets
