"""The ingest path: a batch of samples stored in one statement on an async psycopg connection.

Trainers push samples far more often than anything else, so this path does what the floor of
`bench.ingest` does (FastAPI, a psycopg pool, one statement) and nothing more: one round trip finds
the key's stored response, the run and the probe set, inserts the samples, their analysis job and
the key's response, and a COMMIT makes them durable together. No ORM, no worker thread.

The rules are those of the general path (`service.api.idempotency`): a key replays its first
response for `IDEMPOTENCY_TTL`; a key reused for another request is a conflict; two requests with
one key at the same time meet at the key's primary key, and the second, once the first commits,
runs again and replays it. An expired record under the key is deleted before the second try.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg.errors import UniqueViolation
from psycopg_pool import AsyncConnectionPool

from service.db.idempotency import IDEMPOTENCY_TTL, key_reused
from service.db.queries import no_run, unknown_probe_sets

# `input` types each parameter once. The job is the one `service.queue.defer.enqueue_samples` queues,
# by procrastinate's own INSERT (`service.db.jobs`): one waiting job per (run, step, probe set).
_INGEST = """
WITH input AS (
    SELECT CAST(%(token_id)s AS bigint) AS token_id, CAST(%(key)s AS text) AS key,
           now() - make_interval(secs => CAST(%(ttl)s AS double precision)) AS live_since,
           CAST(%(run_id)s AS bigint) AS ref_id, CAST(%(run_ref)s AS text) AS run_ref,
           CAST(%(probe_set)s AS text) AS probe_set, CAST(%(step)s AS bigint) AS step,
           CAST(%(accepted)s AS integer) AS accepted
), prior AS (
    SELECT k.request_hash, k.status_code, k.response
      FROM idempotency_keys k, input
     WHERE k.token_id = input.token_id AND k.key = input.key AND k.created_at >= input.live_since
), run AS (
    (SELECT r.id FROM runs r, input WHERE r.id = input.ref_id
     UNION ALL
     SELECT r.id FROM runs r, input WHERE r.name = input.run_ref) LIMIT 1
), target AS (
    SELECT run.id AS run_id, probe_set.id AS probe_set_id, input.*
      FROM input CROSS JOIN run LEFT JOIN probe_sets probe_set ON probe_set.name = input.probe_set
     WHERE NOT EXISTS (SELECT FROM prior) AND (input.probe_set IS NULL OR probe_set.id IS NOT NULL)
), stored AS (
    INSERT INTO samples (run_id, step, probe_set_id, prompt, response, logprobs)
    SELECT target.run_id, target.step, target.probe_set_id, item.prompt, item.response, CAST(item.logprobs AS jsonb)
      FROM target, unnest(CAST(%(prompts)s AS text[]), CAST(%(responses)s AS text[]), CAST(%(logprobs)s AS text[]))
           AS item(prompt, response, logprobs)
), job AS (
    INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
    SELECT CAST(%(queue)s AS text), CAST(%(task)s AS text), 0, NULL,
           concat_ws('-', 'samples', run_id, step, coalesce(probe_set, '')),
           jsonb_build_object('run_id', run_id, 'step', step, 'probe_set', coalesce(probe_set, '')), NULL
      FROM target
     WHERE CAST(%(task)s AS text) IS NOT NULL
    ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING
), answer AS (
    INSERT INTO idempotency_keys (token_id, key, method, path, request_hash, status_code, response)
    SELECT token_id, key, 'POST', CAST(%(path)s AS text), CAST(%(fingerprint)s AS text), 202,
           jsonb_build_object('run_id', run_id, 'step', step, 'accepted', accepted)
      FROM target
     WHERE key IS NOT NULL
)
SELECT (SELECT run_id FROM target), EXISTS (SELECT FROM run), prior.request_hash, prior.status_code, prior.response
  FROM (SELECT) AS one LEFT JOIN prior ON true
"""

_FORGET_EXPIRED = """
DELETE FROM idempotency_keys WHERE token_id = %(token_id)s AND key = %(key)s
   AND created_at < now() - make_interval(secs => CAST(%(ttl)s AS double precision))
"""


@dataclass(frozen=True)
class SampleBatch:
    """One POST's samples, validated: where they go and what they are."""

    run_ref: str
    step: int
    probe_set: str | None
    prompts: Sequence[str]
    responses: Sequence[str]
    logprobs: Sequence[Sequence[float] | None]


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: Any


def open_pool(libpq_url: str, *, max_size: int) -> AsyncConnectionPool:
    """The API process's pool for the ingest path (open it inside the event loop: `await pool.open()`).

    It grows on demand from one connection. After the database went away (`store_samples` drains the
    pool on the first broken connection, so one request per process sees it), a connection that cannot
    be replaced within `reconnect_timeout` is given up, and the next request opens one itself: the
    path answers again as soon as the database does, not after the pool's reconnection backoff."""
    return AsyncConnectionPool(libpq_url, min_size=1, max_size=max_size, timeout=10, reconnect_timeout=5,
                               open=False, kwargs={"connect_timeout": 5})


async def store_samples(pool: AsyncConnectionPool, batch: SampleBatch, *, token_id: int, key: str | None,
                        fingerprint: str, path: str, queue: str, task: str | None) -> Answer:
    """Store `batch` and queue its analysis (`task` on `queue`; None: store only), once per `key`: the
    202 answer, or the key's first answer replayed. NotFound for an unknown run or probe set, Conflict for a reused key."""
    params = {
        "token_id": token_id, "key": key, "ttl": IDEMPOTENCY_TTL.total_seconds(), "fingerprint": fingerprint,
        "path": path, "run_ref": batch.run_ref, "run_id": _as_id(batch.run_ref), "probe_set": batch.probe_set,
        "step": batch.step, "accepted": len(batch.prompts),
        "prompts": list(batch.prompts), "responses": list(batch.responses),
        "logprobs": [None if values is None else json.dumps(values) for values in batch.logprobs],
        "queue": queue, "task": task,
    }
    async with pool.connection() as conn:
        try:
            return await _ingest(conn, params, batch)
        except OperationalError:
            await pool.drain()  # the database restarted or went away: every idle connection is stale too
            raise
        except UniqueViolation:
            # The key was stored meanwhile by a concurrent first request (it has committed now), or an
            # expired record holds it: forget the expired one and run again, which replays a live one.
            async with conn.transaction():
                await conn.execute(_FORGET_EXPIRED, params)
            return await _ingest(conn, params, batch)


async def _ingest(conn: AsyncConnection, params: dict[str, Any], batch: SampleBatch) -> Answer:
    async with conn.transaction():
        row = await (await conn.execute(_INGEST, params)).fetchone()
        assert row is not None  # the final SELECT always yields its one row
        run_id, run_exists, prior_hash, prior_status, prior_response = row
        if prior_hash is not None:
            if prior_hash != params["fingerprint"]:
                raise key_reused(params["key"])
            return Answer(prior_status, prior_response)
        if not run_exists:
            raise no_run(batch.run_ref)
        if run_id is None:
            raise unknown_probe_sets([batch.probe_set or ""])
        return Answer(202, {"run_id": run_id, "step": batch.step, "accepted": params["accepted"]})


def _as_id(ref: str) -> int | None:
    """A run named by its numeric id (as `queries.get_run` reads it), else None."""
    return int(ref) if ref.isascii() and ref.isdigit() and len(ref) < 19 else None
