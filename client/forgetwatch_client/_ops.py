"""The operations a call becomes: each request or upload with its order and Idempotency-Key, sample
rows in batches that fit the service's body limit."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

MAX_BATCH_ITEMS = 500
MAX_BATCH_BYTES = 4 * 2**20  # estimated; the service refuses JSON bodies over 16 MiB by default


def segment(name: str) -> str:
    """`name` as one URL path segment."""
    return quote(name, safe="")


class Ops:
    """Makes operations in call order: `seq` grows strictly (wall-clock nanoseconds, so the journal of a
    restarted trainer sorts after its predecessor's), `key` is the Idempotency-Key every retry reuses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_seq = 0

    def new(self, kind: str, what: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            self._last_seq = max(time.time_ns(), self._last_seq + 1)
            seq = self._last_seq
        return {"id": uuid.uuid4().hex, "seq": seq, "key": f"fw-{uuid.uuid4().hex}", "kind": kind, "what": what,
                **fields}

    def request(self, method: str, path: str, body: Any, what: str) -> dict[str, Any]:
        return self.new("request", what, method=method, path=path, body=body)


def sample_row(item: Mapping[str, Any] | tuple[str, str]) -> tuple[dict[str, Any], bool]:
    """The JSON row of one sample, and whether its logprobs were left out for holding inf or NaN
    (JSON cannot carry them)."""
    if not isinstance(item, Mapping):
        prompt, response = item
        return {"prompt": str(prompt), "response": str(response)}, False
    row: dict[str, Any] = {"prompt": str(item["prompt"]), "response": str(item["response"])}
    logprobs = item.get("logprobs")
    if logprobs is None:
        return row, False
    values = [float(x) for x in logprobs]
    if not all(math.isfinite(x) for x in values):
        return row, True
    row["logprobs"] = values
    return row, False


def batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """At most MAX_BATCH_ITEMS rows and about MAX_BATCH_BYTES of JSON per batch (6 bytes per
    character, the worst case of JSON escapes, so no batch can exceed the service's body limit)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        estimate = 64 + 6 * (len(row["prompt"]) + len(row["response"])) + 24 * len(row.get("logprobs") or ())
        if batch and (len(batch) >= MAX_BATCH_ITEMS or size + estimate > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += estimate
    if batch:
        yield batch
