"""One delivery attempt of a call over HTTP, classified as delivered, dropped or worth a retry."""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

log = logging.getLogger("forgetwatch.client")

# Answers that say "not now": the service (or the proxy before it) is down, overloaded or restarting.
UNAVAILABLE = frozenset({408, 429, 502, 503, 504})


class ForgetwatchError(Exception):
    """A call the service refused (with its `detail`) or could not be reached for (blocking mode)."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class Outcome:
    """`ok`: delivered. `drop`: refused for good (4xx). `retry`: try again later; `unavailable` when
    the service could not be reached or said so (retried without limit in the background)."""

    kind: Literal["ok", "drop", "retry"]
    status_code: int | None = None
    detail: Any = None
    body: Any = None
    unavailable: bool = False
    retry_after: float | None = None

    def describe(self) -> str:
        return f"HTTP {self.status_code}: {self.detail}" if self.status_code else str(self.detail)


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Capped exponential backoff with equal jitter: uniform in [d/2, d], d = min(cap, base * 2**attempt).
    A server's Retry-After is honoured up to `cap`."""
    delay = min(cap, base * 2 ** min(attempt, 30))
    delay = (rng or random).uniform(delay / 2, delay)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def classify(response: httpx.Response) -> Outcome:
    status = response.status_code
    if 200 <= status < 300:
        try:
            body = response.json()
        except ValueError:
            body = None
        return Outcome("ok", status, body=body)
    detail = _detail(response)
    if status in UNAVAILABLE:
        return Outcome("retry", status, detail, unavailable=True, retry_after=_retry_after(response))
    if status >= 500:
        return Outcome("retry", status, detail, retry_after=_retry_after(response))
    return Outcome("drop", status, detail)


def request(
    http: httpx.Client,
    method: str,
    path: str,
    *,
    key: str | None = None,
    json: Any = None,
    timeout: float | None = None,
) -> Outcome:
    headers = {"Idempotency-Key": key} if key else {}
    try:
        kwargs: dict[str, Any] = {"headers": headers, "json": json}
        if timeout is not None:
            kwargs["timeout"] = timeout
        response = http.request(method, path, **kwargs)
    except httpx.TransportError as error:  # connect/read/write errors and timeouts
        return Outcome("retry", None, f"{type(error).__name__}: {error}", unavailable=True)
    return classify(response)


# The names the upload endpoint accepts (service/api/routes/checkpoints.py).
UPLOADABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]{0,254}$")


def upload_files(folder: Path, skip: frozenset[str]) -> list[Path]:
    """The top-level files of a checkpoint folder, in name order. Subfolders and names the service
    would refuse (hidden files, spaces, ...) are left out with a warning."""
    files, left_out = [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() or (entry.is_file() and not UPLOADABLE_NAME.match(entry.name)):
            left_out.append(entry.name)
        elif entry.is_file() and not any(entry.match(pattern) for pattern in skip):
            files.append(entry)
    if left_out:
        log.warning(
            "action=upload_entries_skipped folder=%s entries=%s (the upload endpoint takes top-level files "
            "named with letters, digits, '.', '_', '-'; register by reference to include the rest)",
            folder,
            left_out,
        )
    return files


def upload(http: httpx.Client, op: dict[str, Any], on_file: Callable[[str], None]) -> Outcome:
    """PUT each file of the checkpoint folder (streamed from disk), then register the step."""
    folder = Path(op["folder"])
    try:
        files = upload_files(folder, frozenset(op.get("skip", ())))
    except OSError as error:
        return Outcome("drop", None, f"cannot read checkpoint folder {folder}: {error.strerror}")
    if not files:
        return Outcome("drop", None, f"checkpoint folder {folder} has no files to upload")
    done = set(op.get("uploaded", ()))
    for file in files:
        if file.name in done:
            continue
        key = f"{op['key']}-{hashlib.sha256(file.name.encode()).hexdigest()[:16]}"
        try:
            with open(file, "rb") as content:  # httpx streams a file object in 64 KiB chunks
                response = http.put(
                    f"{op['path']}/{op['step']}/files/{file.name}",
                    content=content,
                    headers={"Idempotency-Key": key, "Content-Type": "application/octet-stream"},
                )
        except httpx.TransportError as error:
            return Outcome("retry", None, f"{type(error).__name__}: {error}", unavailable=True)
        except OSError as error:
            return Outcome("drop", None, f"cannot read {file}: {error.strerror}")
        outcome = classify(response)
        if outcome.kind != "ok":
            return outcome
        on_file(file.name)
    return request(http, "POST", op["path"], key=op["key"], json={"step": op["step"]})


def deliver(http: httpx.Client, op: dict[str, Any], on_file: Callable[[str], None]) -> Outcome:
    """One attempt at delivering a call; never raises."""
    try:
        if op["kind"] == "upload":
            return upload(http, op, on_file)
        return request(http, op["method"], op["path"], key=op["key"], json=op.get("body"))
    except Exception as error:  # a bug or an odd environment must not wedge the queue
        log.exception("action=deliver_failed call=%s", op.get("what"))
        return Outcome("drop", None, f"{type(error).__name__}: {error}")
