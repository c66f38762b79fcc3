"""Background delivery: calls in strict order, retried, spilled to the journal while the service is
down or the in-memory queue is filling up.

The pending calls, oldest first, are: the one in flight, then those in the journal (read back by
offset), then those on their way there, then the in-memory inbox. A training-loop thread only ever
appends to the inbox; the writer thread moves the inbox's oldest calls to the journal (in order, so
the journal always holds older calls than the inbox) and fsyncs; the sender thread delivers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from forgetwatch_client._journal import Journal
from forgetwatch_client._transport import Outcome, backoff_seconds, deliver

log = logging.getLogger("forgetwatch.client")


@dataclass(frozen=True)
class Refusal:
    """A call the service refused (4xx): what it was, and the service's answer."""

    call: str
    status_code: int | None
    detail: Any


class Delivery:
    def __init__(
        self,
        *,
        url: str,
        make_http: Callable[[], httpx.Client],
        queue_size: int,
        max_retries: int,
        backoff: tuple[float, float],
    ) -> None:
        self.url = url
        self._make_http = make_http
        self._queue_size = queue_size
        self._spill_at = max(1, queue_size // 2)
        self._max_retries = max_retries
        self._backoff = backoff
        self.counts = {"sent": 0, "retried": 0, "dropped": 0, "journaled": 0, "refused": 0}
        self.refusals: deque[Refusal] = deque(maxlen=1000)
        self._cond = threading.Condition()  # guards everything below; never held during I/O
        self._inbox: deque[dict[str, Any]] = deque()
        self._transit: list[dict[str, Any]] = []  # taken from the inbox by the writer, being written
        self._journaled: deque[tuple[int, str]] = deque()  # (offset, id) of journaled calls not yet sent
        self._journal: Journal | None = None
        self._in_flight: dict[str, Any] | None = None
        self._in_flight_journaled = False
        self._down = False
        self._stopping = False
        self._closed = False
        self._nudged = False
        self._warned: set[str] = set()
        self._dropped_at_flush = 0
        self._sender = threading.Thread(target=self._send_loop, name="forgetwatch-sender", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="forgetwatch-journal", daemon=True)
        self._sender.start()
        self._writer.start()

    @property
    def down(self) -> bool:
        return self._down

    @property
    def journal_path(self) -> Path | None:
        return self._journal.path if self._journal is not None else None

    def pending(self) -> int:
        with self._cond:
            return self._pending()

    def _pending(self) -> int:
        return len(self._inbox) + len(self._transit) + len(self._journaled) + (self._in_flight is not None)

    def open_journal(self, path: Path) -> None:
        """Use the journal at `path`; the calls it holds (older than any made since) are sent first."""
        try:
            journal, offsets = Journal.open(path)
        except OSError as error:
            log.warning(
                "action=journal_unavailable journal=%s error=%s (calls wait in memory only)", path, error
            )
            return
        with self._cond:
            self._journal = journal
            self._journaled.extend(offsets)
            self._cond.notify_all()
        if offsets:
            log.info("action=journal_replay journal=%s calls=%d", journal.path, len(offsets))

    def count_dropped(self) -> None:
        with self._cond:
            self.counts["dropped"] += 1

    def submit(self, op: dict[str, Any]) -> None:
        """From the training loop: O(1), no I/O."""
        with self._cond:
            if self._closed:
                self.counts["dropped"] += 1
                self._warn_once(
                    "closed", logging.ERROR, "action=call_dropped reason=client_closed call=%s", op["what"]
                )
                return
            if len(self._inbox) >= self._queue_size:
                if self._journal is None:
                    self.counts["dropped"] += 1
                    self._warn_once(
                        "full",
                        logging.ERROR,
                        "action=call_dropped reason=queue_full queue_size=%d (no "
                        "journal to spill to yet: call run() first, or pass journal_path)",
                        self._queue_size,
                    )
                    return
                self._warn_once(
                    "behind",
                    logging.WARNING,
                    "action=journal_behind queue_size=%d (the disk is "
                    "slower than the calls; holding them in memory meanwhile)",
                    self._queue_size,
                )
            self._inbox.append(op)
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """True once nothing is pending and nothing was dropped since the last flush."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._nudged = True  # cut a backoff wait short: try now
            self._cond.notify_all()
            while self._pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sender.is_alive():
                    return False
                self._cond.wait(min(remaining, 0.5))
            delivered = self.counts["dropped"] == self._dropped_at_flush
            self._dropped_at_flush = self.counts["dropped"]
            return delivered

    def close(self, timeout: float) -> int:
        """Deliver for up to `timeout` seconds, stop, and journal what is left; returns how many."""
        started = time.monotonic()
        self.flush(max(0.0, timeout - 0.2))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in (self._writer, self._sender):
            thread.join(max(0.01, timeout - (time.monotonic() - started)))
        with self._cond:
            self._closed = True
            left = self._pending()
            journal = self._journal
            stranded = [op for op in (self._in_flight,) if op is not None and not self._in_flight_journaled]
            stranded += self._transit + list(self._inbox)
        if journal is None:
            if left:
                log.error(
                    "action=calls_lost calls=%d (no journal: call run() first, or pass journal_path)", left
                )
            return left
        try:
            with journal.lock:
                if stranded:
                    journal.append_ops(stranded)
                    self.counts["journaled"] += len(stranded)
                journal.close(remove=left == 0)
        except OSError as error:
            log.error(
                "action=journal_write_failed journal=%s error=%s calls_lost=%d",
                journal.path,
                error,
                len(stranded),
            )
        return left

    def _warn_once(self, key: str, level: int, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, message, *args)

    # ---- the writer thread -------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._should_spill():
                    self._cond.wait(1.0)
                if self._stopping:
                    return
                journal = self._journal
                assert journal is not None
                self._transit = list(self._inbox)
                self._inbox.clear()
            try:
                with journal.lock:
                    offsets = journal.append_ops(self._transit)
                    journal.sync()
                    with self._cond:
                        self._journaled.extend(zip(offsets, (op["id"] for op in self._transit)))
                        self.counts["journaled"] += len(self._transit)
                        self._transit = []
                        self._cond.notify_all()
            except (OSError, ValueError) as error:  # disk full, or closed meanwhile
                with self._cond:
                    self._inbox.extendleft(reversed(self._transit))
                    self._transit = []
                    self._cond.notify_all()
                log.warning("action=journal_write_failed error=%s (calls wait in memory)", error)
                self._pause(5.0)

    def _should_spill(self) -> bool:
        return (
            self._journal is not None
            and not self._journal.closed
            and bool(self._inbox)
            and (self._down or len(self._inbox) >= self._spill_at)
        )

    # ---- the sender thread -------------------------------------------------------------------

    def _next(self) -> dict[str, Any] | None:
        """Wait for the oldest pending call and mark it in flight; None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._in_flight is not None:  # being retried
                    return self._in_flight
                if self._journaled:
                    offset, _ = self._journaled[0]
                    journal = self._journal
                    break
                if self._inbox and not self._transit:
                    self._in_flight, self._in_flight_journaled = self._inbox.popleft(), False
                    return self._in_flight
                self._cond.wait(1.0)
        assert journal is not None
        op = journal.read_op(offset)  # only this thread removes entries from _journaled
        with self._cond:
            self._journaled.popleft()
            self._in_flight, self._in_flight_journaled = op, True
        return op

    def _send_loop(self) -> None:
        http = self._make_http()
        attempt = 0
        try:
            while True:
                op = self._next()
                if op is None:
                    return
                outcome = deliver(http, op, lambda name, op=op: self._uploaded(op, name))
                if outcome.kind == "retry" and (outcome.unavailable or attempt < self._max_retries):
                    self._retry_later(op, outcome, attempt)
                    attempt += 1
                    continue
                self._finish(op, outcome)
                attempt = 0
        except Exception:
            log.exception("action=sender_crashed (pending calls stay queued; close() journals them)")
        finally:
            http.close()

    def _retry_later(self, op: dict[str, Any], outcome: Outcome, attempt: int) -> None:
        with self._cond:
            self.counts["retried"] += 1
            if outcome.unavailable and not self._down:
                log.warning(
                    "action=service_unreachable url=%s reason=%s (calls go to the journal and are retried)",
                    self.url,
                    outcome.describe(),
                )
            self._down = self._down or outcome.unavailable
            journal = self._journal if self._down and not self._in_flight_journaled else None
            self._cond.notify_all()  # the writer spills the inbox while the service is down
        if journal is not None:  # the call in flight is the oldest: journal it too
            try:
                with journal.lock:
                    journal.append_ops([op])
                    journal.sync()
                with self._cond:
                    self._in_flight_journaled = True
                    self.counts["journaled"] += 1
            except (OSError, ValueError) as error:
                log.warning("action=journal_write_failed error=%s", error)
        self._pause(
            backoff_seconds(
                attempt, base=self._backoff[0], cap=self._backoff[1], retry_after=outcome.retry_after
            )
        )

    def _finish(self, op: dict[str, Any], outcome: Outcome) -> None:
        if outcome.kind != "ok":
            _log_drop(op, outcome)
        if outcome.kind == "drop":
            self._keep_refused(op, outcome)
        with self._cond:
            if self._down and outcome.status_code is not None:
                log.info("action=service_reachable url=%s", self.url)
            if outcome.status_code is not None:
                self._down = False
            self.counts["sent" if outcome.kind == "ok" else "dropped"] += 1
            journal, journaled = self._journal, self._in_flight_journaled
        if journal is not None and journaled:
            try:
                with journal.lock, self._cond:  # lock order: journal, then _cond
                    if not journal.closed:
                        if self._journaled or self._transit:
                            journal.append_done(op["id"])
                        else:
                            journal.reset()  # everything in it was delivered
            except (OSError, ValueError) as error:
                log.warning("action=journal_write_failed error=%s", error)
        with self._cond:
            self._in_flight, self._in_flight_journaled = None, False
            self._cond.notify_all()

    def _keep_refused(self, op: dict[str, Any], outcome: Outcome) -> None:
        """A refused call is never dropped silently: it is listed (`ForgetwatchClient.failed()`) and kept
        in the refusals file beside the journal; 401/403 ones are sent again by the next client."""
        with self._cond:
            self.counts["refused"] += 1
            self.refusals.append(Refusal(call=op["what"], status_code=outcome.status_code, detail=outcome.detail))
            journal = self._journal
        if journal is not None:
            try:
                journal.append_refused(op, outcome.status_code, outcome.detail)
            except (OSError, ValueError) as error:
                log.warning("action=journal_write_failed error=%s", error)

    def _uploaded(self, op: dict[str, Any], filename: str) -> None:
        op.setdefault("uploaded", []).append(filename)
        with self._cond:
            journal = self._journal if self._in_flight_journaled else None
        if journal is not None:
            try:
                journal.append_uploaded(op["id"], filename)
            except (OSError, ValueError) as error:
                log.warning("action=journal_write_failed error=%s", error)

    def _pause(self, seconds: float) -> None:
        """Sleep unless stopping, or nudged by flush()."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping and not self._nudged:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._nudged = False


def _log_drop(op: dict[str, Any], outcome: Outcome) -> None:
    if outcome.kind == "retry":
        log.error(
            "action=call_dropped call=%s reason=%s (gave up after repeated errors)",
            op["what"],
            outcome.describe(),
        )
    elif outcome.status_code == 409 and op["what"].startswith("checkpoint"):
        log.warning(
            "action=checkpoint_dropped call=%s reason=%s (already registered with another uri; "
            "checkpoints are immutable: register the new one under its own step)",
            op["what"],
            outcome.describe(),
        )
    elif outcome.status_code == 409 and op["what"].startswith("run "):
        log.error(
            "action=run_conflict call=%s reason=%s (later calls for this name go to the existing run: "
            "choose a new run name)",
            op["what"],
            outcome.describe(),
        )
    else:
        level = logging.ERROR if outcome.status_code in (401, 403) else logging.WARNING
        log.log(level, "action=call_dropped call=%s reason=%s", op["what"], outcome.describe())
