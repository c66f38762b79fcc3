"""Blocking delivery (for scripts): each operation is sent before its call returns, transient failures
retried a bounded number of times, a refusal raised with the service's `detail`."""

from __future__ import annotations

import time
from typing import Any

import httpx

from forgetwatch_client._transport import ForgetwatchError, backoff_seconds, deliver


class BlockingSender:
    def __init__(self, http: httpx.Client, *, max_retries: int, backoff: tuple[float, float]) -> None:
        self._http = http
        self._max_retries = max_retries
        self._backoff = backoff
        self.counts = {"sent": 0, "retried": 0, "dropped": 0, "journaled": 0, "refused": 0}

    def send(self, op: dict[str, Any]) -> Any:
        """The service's JSON answer to `op`; ForgetwatchError when it is refused or never answered."""
        for attempt in range(self._max_retries + 1):
            outcome = deliver(self._http, op, lambda name: op.setdefault("uploaded", []).append(name))
            if outcome.kind == "ok":
                self.counts["sent"] += 1
                return outcome.body
            if outcome.kind == "drop":
                self.counts["dropped"] += 1
                raise ForgetwatchError(f"{op['what']}: {outcome.describe()}", status_code=outcome.status_code,
                                       detail=outcome.detail)
            if attempt < self._max_retries:
                self.counts["retried"] += 1
                time.sleep(backoff_seconds(attempt, base=self._backoff[0], cap=self._backoff[1],
                                           retry_after=outcome.retry_after))
        raise ForgetwatchError(
            f"{op['what']}: gave up after {self._max_retries + 1} attempts: {outcome.describe()}",
            status_code=outcome.status_code, detail=outcome.detail)
