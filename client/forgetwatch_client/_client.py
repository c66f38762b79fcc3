"""ForgetwatchClient: the calls a trainer makes, delivered in order by a background thread."""

from __future__ import annotations

import atexit
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from forgetwatch_client._blocking import BlockingSender
from forgetwatch_client._delivery import Delivery, Refusal
from forgetwatch_client._journal import default_journal_path
from forgetwatch_client._ops import Ops, batches, sample_row
from forgetwatch_client._ops import segment as _segment
from forgetwatch_client._status import RunStatus
from forgetwatch_client._transport import ForgetwatchError, Outcome, classify

log = logging.getLogger("forgetwatch.client")


class ForgetwatchClient:
    """Push a run's checkpoints and samples to a forgetwatch service.

    Non-blocking (default, for training loops): every call returns at once and never raises; a
    background thread delivers calls strictly in order, each with its own Idempotency-Key reused on
    every retry. Connection errors, timeouts, 408, 429, 502-504 are retried without limit (the call
    waits in the journal), other 5xx up to `max_retries` times; other 4xx are logged and dropped.
    Calls wait in memory (`queue_size` of them) and go to the journal file while the service is down
    or the queue is full; a client replays its run's journal when `run()` is called (or at once with
    an explicit `journal_path`), so a restarted trainer delivers what its predecessor could not.

    A client still open at interpreter exit is closed then (up to 5 s).

    Blocking (`blocking=True`, for scripts): each call is sent before it returns (transient errors
    retried `max_retries` times) and returns the service's JSON; a refusal raises ForgetwatchError
    with the service's `detail`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        blocking: bool = False,
        journal_path: str | os.PathLike | None = None,
        queue_size: int = 1000,
        timeout: float = 10.0,
        max_retries: int = 8,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        status_timeout: float = 2.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.url = url.rstrip("/")
        self.blocking = blocking
        self._token = token
        self._timeout = timeout
        self._status_timeout = status_timeout
        self._http = self._new_http()  # the caller's (status, probe sets, blocking sends)
        self._ops = Ops()
        self._sender = BlockingSender(self._http, max_retries=max_retries, backoff=(backoff_base, backoff_cap))
        self._run: str | None = None
        self._run_probe_sets: tuple[str, ...] = ()
        self._probe_items: dict[str, list[dict[str, Any]]] = {}
        self._once: set[str] = set()
        self._closed = False
        self._journal_path = Path(journal_path) if journal_path is not None else None
        self._delivery: Delivery | None = None
        if not blocking:
            self._delivery = Delivery(
                url=self.url,
                make_http=self._new_http,
                queue_size=queue_size,
                max_retries=max_retries,
                backoff=(backoff_base, backoff_cap),
            )
            if self._journal_path is not None:
                self._delivery.open_journal(self._journal_path)
            atexit.register(_close_at_exit, weakref.ref(self))

    # ---- public calls ------------------------------------------------------------------------

    def run(
        self,
        name: str,
        base_model: str,
        method: str = "unspecified",
        probe_sets: Sequence[str] = (),
        tags: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Register the run (the same definition again is a no-op); later calls refer to it by name."""

        def build() -> list[dict[str, Any]]:
            if name.isdigit() or "/" in name:
                log.warning(
                    "action=run_name_awkward run=%s (the service looks names of digits up as ids and "
                    "cannot route names with '/'; prefer letters, digits, '.', '_', '-')",
                    name,
                )
            self._run, self._run_probe_sets = name, tuple(probe_sets)
            if self._delivery is not None and self._journal_path is None:
                self._journal_path = default_journal_path(self.url, name)
                self._delivery.open_journal(self._journal_path)
            body = {
                "name": name,
                "base_model": str(base_model),
                "method": method,
                "tags": dict(tags or {}),
                "probe_sets": list(probe_sets),
            }
            return [self._request_op("POST", "/v1/runs", body, f"run {name}")]

        return self._call(build)

    def probe_set(self, name: str, domain: str, items: Iterable[str | Mapping[str, Any]], description: str = "",
                  format: str = "text") -> dict[str, Any] | None:
        """Create a probe set (immutable; the same one again is a no-op). `domain`: "in_domain" or "ood";
        items: prompts, or dicts with "prompt" and optional "reference" and "answer" (`format="chat"`:
        "messages" ending with a user turn instead of "prompt", rendered with the base's chat template)."""

        def build() -> list[dict[str, Any]]:
            rows = [{"prompt": i} if isinstance(i, str) else dict(i) for i in items]
            self._probe_items[name] = rows
            body = {"name": name, "domain": domain, "format": format, "description": description, "items": rows}
            return [self._request_op("POST", "/v1/probe-sets", body, f"probe set {name}")]

        return self._call(build)

    def add_stage(self, name: str, start_step: int, probe_sets: Sequence[str]) -> dict[str, Any] | None:
        """Append a stage to the run: from `start_step` on it trains for `probe_sets`; earlier stages'
        probe sets and ood sets become its retention sets. The same stage again is a no-op."""

        def build() -> list[dict[str, Any]]:
            run = self._require_run("add_stage")
            body = {"name": name, "start_step": int(start_step), "probe_sets": list(probe_sets)}
            return [self._request_op("POST", f"/v1/runs/{_segment(run)}/stages", body, f"stage run={run} {name}")]

        return self._call(build)

    def preview_stage(self, name: str, prompts: Sequence[str]) -> dict[str, Any] | None:
        """Before stage `name` runs, send a sample of its training prompts (8 or more): the service
        forecasts the forgetting of each retention set (read it with `ForgetwatchReader.preview`)."""

        def build() -> list[dict[str, Any]]:
            run = self._require_run("preview_stage")
            path = f"/v1/runs/{_segment(run)}/stages/{_segment(name)}/preview"
            return [self._request_op("POST", path, {"prompts": list(prompts)}, f"preview run={run} {name}")]

        return self._call(build)

    def checkpoint(
        self, step: int, path: str | os.PathLike, *, upload: bool = False, skip: Iterable[str] = ()
    ) -> dict[str, Any] | None:
        """Register the checkpoint folder saved at `step`: by reference (the service reads `path`, a local
        folder or an `s3://`/`gs://`/`hf://` URI, which must lie in its FORGETWATCH_CHECKPOINT_ROOTS) or, with
        `upload`, by streaming each top-level file of a local folder to the service (files matching a
        `skip` glob are left out)."""

        def build() -> list[dict[str, Any]]:
            run = self._require_run("checkpoint")
            location = os.fspath(path)
            if "://" in location and upload:
                raise ValueError(f"{location[:200]}: only a local folder is uploaded; register a URI by reference")
            folder = location if "://" in location else os.path.abspath(location)
            base = f"/v1/runs/{_segment(run)}/checkpoints"
            what = f"checkpoint run={run} step={step}"
            if not upload:
                return [self._request_op("POST", base, {"step": int(step), "uri": folder}, what)]
            return [self._ops.new("upload", what, path=base, step=int(step), folder=folder, skip=list(skip))]

        return self._call(build)

    def samples(
        self, step: int, items: Iterable[Mapping[str, Any] | tuple[str, str]], probe_set: str | None = None
    ) -> dict[str, Any] | None:
        """Sampled responses of the model at `step`: dicts with "prompt", "response" and optional
        "logprobs", or (prompt, response) pairs. Sent in batches of at most 500."""

        def build() -> list[dict[str, Any]]:
            run = self._require_run("samples")
            rows = [self._sample_row(item) for item in items]
            path = f"/v1/runs/{_segment(run)}/samples"
            return [
                self._request_op(
                    "POST",
                    path,
                    {"step": int(step), "probe_set": probe_set, "items": batch},
                    f"samples run={run} step={step} items={len(batch)}",
                )
                for batch in batches(rows)
            ]

        return self._call(build)

    def labels(self, step: int, values: Mapping[str, float]) -> dict[str, Any] | None:
        """Ground truth measured by the trainer at `step` (e.g. {"ood_accuracy": 0.91}); post the
        base's values at step 0. `forgetwatch calibrate` sets the alarm threshold from them."""

        def build() -> list[dict[str, Any]]:
            run = self._require_run("labels")
            body = {"step": int(step), "labels": {str(k): float(v) for k, v in values.items()}}
            return [self._request_op("POST", f"/v1/runs/{_segment(run)}/labels", body,
                                     f"labels run={run} step={step}")]

        return self._call(build)

    def metrics(self, step: int, values: Mapping[str, float]) -> dict[str, Any] | None:
        """Training metrics logged at `step` (e.g. {"loss": 1.2, "reward": 0.4, "kl": 0.01}); NaN and
        infinite values are left out (the service refuses them)."""
        finite = {str(k): float(v) for k, v in values.items() if math.isfinite(float(v))}
        if not finite:
            return None

        def build() -> list[dict[str, Any]]:
            run = self._require_run("metrics")
            body = {"points": [{"step": int(step), "values": finite}]}
            return [self._request_op("POST", f"/v1/runs/{_segment(run)}/metrics", body,
                                     f"metrics run={run} step={step}")]

        return self._call(build)

    def status(self, run: str | None = None) -> RunStatus | None:
        """The run's forgetting status, detection and forecast (a synchronous read, bounded by
        `status_timeout` in non-blocking mode). None when it cannot be had: service unreachable, or no status endpoint on this service."""
        try:
            name = run or self._require_run("status")
            if self._delivery is not None and self._delivery.down:
                return None
            kwargs = {} if self.blocking else {"timeout": self._status_timeout}
            response = self._http.get(f"/v1/runs/{_segment(name)}/status", **kwargs)
            outcome = classify(response)
            if outcome.status_code == 404 and outcome.detail == "Not Found":  # the route, not the run
                self._log_once(
                    "status_missing",
                    logging.WARNING,
                    "action=status_unavailable url=%s (this "
                    "service has no GET /v1/runs/{run}/status; upgrade it for forgetting checks)",
                    self.url,
                )
                return None
            if outcome.kind != "ok":
                return self._refused(f"status of run {name}", outcome)
            return RunStatus.from_json(outcome.body)
        except Exception as error:  # noqa: BLE001 - a read for the training loop never raises into it
            return self._read_failed("status", error)

    def probe_set_items(self, name: str) -> list[dict[str, Any]] | None:
        """A probe set's items: those given to `probe_set()` by this client, else GET /v1/probe-sets/{name}."""
        try:
            if name not in self._probe_items:
                kwargs = {} if self.blocking else {"timeout": self._status_timeout}
                outcome = classify(self._http.get(f"/v1/probe-sets/{_segment(name)}", **kwargs))
                if outcome.kind != "ok":
                    return self._refused(f"probe set {name}", outcome)
                self._probe_items[name] = list(outcome.body["items"])
            return [dict(i) for i in self._probe_items[name]]
        except Exception as error:  # noqa: BLE001 - as in status()
            return self._read_failed(f"probe set {name}", error)

    @property
    def run_name(self) -> str | None:
        return self._run

    @property
    def run_probe_sets(self) -> tuple[str, ...]:
        return self._run_probe_sets

    @property
    def stats(self) -> dict[str, int]:
        """Counters: sent, retried, dropped (refused calls included), refused, journaled (calls written to
        the journal), pending."""
        if self._delivery is None:
            return {**self._sender.counts, "pending": 0}
        return {**self._delivery.counts, "pending": self._delivery.pending()}

    def failed(self) -> list[Refusal]:
        """Calls the service refused (4xx), oldest first (the last 1000): never dropped silently. They are
        also kept beside the journal (`<journal>.refused.jsonl`); those refused for the token (401,
        403) are sent again by the next client of this run."""
        return [] if self._delivery is None else list(self._delivery.refusals)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait up to `timeout` seconds for every call so far to be handled. True if all were
        delivered (none pending, none dropped since the last flush)."""
        return self._delivery is None or self._delivery.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is pending for up to `timeout` seconds, then stop; what is left stays in the
        journal for the next client of this run."""
        if self._closed:
            return
        self._closed = True
        if self._delivery is not None:
            left = self._delivery.close(timeout)
            log.log(
                logging.WARNING if left else logging.INFO,
                "action=client_closed url=%s run=%s sent=%d retried=%d dropped=%d journaled=%d left=%d%s",
                self.url,
                self._run,
                *list(self._delivery.counts.values())[:4],
                left,
                f" journal={self._delivery.journal_path}" if left else "",
            )
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- building calls ----------------------------------------------------------------------

    def _new_http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            timeout=self._timeout,
            headers={"Authorization": f"Bearer {self._token}", "User-Agent": "forgetwatch-client/1"},
        )

    def _request_op(self, method: str, path: str, body: Any, what: str) -> dict[str, Any]:
        return self._ops.request(method, path, body, what)

    def _require_run(self, call: str) -> str:
        if self._run is None:
            raise ForgetwatchError(f"{call}() before run(): register the run first with client.run(...)")
        return self._run

    def _sample_row(self, item: Mapping[str, Any] | tuple[str, str]) -> dict[str, Any]:
        row, left_out = sample_row(item)
        if left_out:
            self._log_once("logprobs_inf", logging.WARNING, "action=logprobs_left_out reason=non-finite "
                           "(JSON cannot carry inf/nan; such items are sent without logprobs)")
        return row

    def _call(self, build: Callable[[], list[dict[str, Any]]]) -> dict[str, Any] | None:
        if self.blocking:
            result = None
            for op in build():
                if self._closed:
                    raise ForgetwatchError("the client is closed")
                result = self._sender.send(op)
            return result
        assert self._delivery is not None
        try:
            for op in build():
                self._delivery.submit(op)
        except Exception as error:  # noqa: BLE001 - never into the training loop
            self._delivery.count_dropped()
            log.error("action=call_refused error=%s: %s", type(error).__name__, error)
        return None

    def _refused(self, what: str, outcome: Outcome) -> None:
        if self.blocking:
            raise ForgetwatchError(
                f"{what}: {outcome.describe()}", status_code=outcome.status_code, detail=outcome.detail
            )
        log.warning("action=read_failed what=%s reason=%s", what, outcome.describe())

    def _read_failed(self, what: str, error: Exception) -> None:
        if isinstance(error, ForgetwatchError) and self.blocking:
            raise error
        if self.blocking:
            raise ForgetwatchError(f"{what}: {type(error).__name__}: {error}") from error
        log.warning("action=read_failed what=%s error=%s: %s", what, type(error).__name__, error)

    def _log_once(self, key: str, level: int, message: str, *args: Any) -> None:
        if key not in self._once:
            self._once.add(key)
            log.log(level, message, *args)


def _close_at_exit(ref: weakref.ref[ForgetwatchClient]) -> None:
    client = ref()
    if client is not None:
        client.close(timeout=5.0)
