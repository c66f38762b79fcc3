"""Query functions. Each takes the session as a keyword argument; the caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import Checkpoint, ProbeItem, ProbeSet, Run, RunProbeSet, Sample
from service.errors import Conflict, NotFound


def no_run(ref: str) -> NotFound:
    return NotFound(f"no run {ref!r}; list runs with GET /v1/runs or create it with POST /v1/runs")


def unknown_probe_sets(names: Sequence[str]) -> NotFound:
    return NotFound(f"unknown probe sets {sorted(names)}; create them first with POST /v1/probe-sets")


def get_run(session: Session, *, ref: str) -> Run:
    """A run by numeric id or by name."""
    run = None
    if ref.isascii() and ref.isdigit() and len(ref) < 19:
        run = session.get(Run, int(ref))
    if run is None:
        run = session.scalar(select(Run).where(Run.name == ref))
    if run is None:
        raise no_run(ref)
    return run


def list_runs(session: Session, *, after: int | None = None, limit: int | None = None, method: str | None = None,
              tags: Mapping[str, str] | None = None, archived: bool = False) -> Sequence[Run]:
    """Runs in id order: those after the cursor `after` (an id), at most `limit`, filtered by method and
    tags (values compared as text); archived runs only with `archived=True`, and then only those."""
    query = select(Run).where(Run.archived_at.is_not(None) if archived else Run.archived_at.is_(None))
    if after is not None:
        query = query.where(Run.id > after)
    if method is not None:
        query = query.where(Run.method == method)
    for key, value in (tags or {}).items():
        query = query.where(Run.tags[key].astext == value)
    return session.scalars(query.order_by(Run.id).limit(limit)).all()


def update_tags(session: Session, *, run: Run, tags: Mapping[str, Any], remove: Sequence[str] = ()) -> Run:
    """Merge `tags` over the run's tags, then drop the keys in `remove`."""
    merged = {**run.tags, **tags}
    for key in remove:
        merged.pop(key, None)
    run.tags = merged
    session.flush()
    return run


def set_archived(session: Session, *, run: Run, archived: bool) -> Run:
    """Archive (hide from lists, pages and /metrics; keep everything) or bring back a run. Idempotent."""
    if archived and run.archived_at is None:
        run.archived_at = session.scalar(select(func.now()))
    elif not archived:
        run.archived_at = None
    session.flush()
    return run


def delete_run(session: Session, *, run: Run) -> None:
    """Delete a run and, through the schema's cascades, every row measured for it."""
    session.delete(run)
    session.flush()


def run_probe_set_names(session: Session, *, run_id: int) -> list[str]:
    return list(
        session.scalars(
            select(ProbeSet.name)
            .join(RunProbeSet, RunProbeSet.probe_set_id == ProbeSet.id)
            .where(RunProbeSet.run_id == run_id)
            .order_by(ProbeSet.name)
        )
    )


def last_step(session: Session, *, run_id: int) -> int | None:
    """The run's latest checkpoint step, or None when it has none."""
    return session.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.run_id == run_id))


def checkpoint_run_step(session: Session, *, checkpoint_id: int) -> tuple[int, int] | None:
    """(run_id, step) of a checkpoint, or None once it is deleted."""
    row = session.execute(select(Checkpoint.run_id, Checkpoint.step).where(Checkpoint.id == checkpoint_id)).first()
    return None if row is None else (row.run_id, row.step)


def last_steps(session: Session) -> dict[int, int]:
    rows = session.execute(select(Checkpoint.run_id, func.max(Checkpoint.step)).group_by(Checkpoint.run_id))
    return {run_id: step for run_id, step in rows}


def probe_set_ids(session: Session, *, names: Sequence[str]) -> dict[str, int]:
    found = dict(session.execute(select(ProbeSet.name, ProbeSet.id).where(ProbeSet.name.in_(names))).all())
    missing = set(names) - set(found)
    if missing:
        raise unknown_probe_sets(list(missing))
    return found


def run_named(session: Session, *, name: str) -> Run | None:
    return session.scalar(select(Run).where(Run.name == name))


def create_run(
    session: Session,
    *,
    name: str,
    base_model: str,
    method: str,
    tags: dict[str, Any],
    probe_sets: Sequence[str],
) -> tuple[Run, bool]:
    """Create a run; the same base and method again return the existing run (its stored tags unchanged),
    a different base or method conflicts."""
    ids = probe_set_ids(session, names=probe_sets) if probe_sets else {}
    existing = session.scalar(select(Run).where(Run.name == name))
    if existing is None:
        run = Run(name=name, base_model=base_model, method=method, tags=tags)
        session.add(run)
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:
            existing = session.scalar(select(Run).where(Run.name == name))
        else:
            attach_probe_sets(session, run_id=run.id, probe_set_ids=ids.values())
            return run, True
    assert existing is not None
    # A run is its base and method; tags describe it and change through PATCH, so a trainer that
    # restarts with the tags it started with is never refused (the stored tags stay).
    if (existing.base_model, existing.method) != (base_model, method):
        raise Conflict(
            f"run {name!r} already exists with base_model={existing.base_model!r}, "
            f"method={existing.method!r}; choose another name for a different run"
        )
    attach_probe_sets(session, run_id=existing.id, probe_set_ids=ids.values())
    return existing, False


def attach_probe_sets(session: Session, *, run_id: int, probe_set_ids: Any) -> None:
    for probe_set_id in probe_set_ids:
        session.execute(
            text(
                "INSERT INTO run_probe_sets (run_id, probe_set_id) VALUES (:r, :p) ON CONFLICT DO NOTHING"
            ),
            {"r": run_id, "p": probe_set_id},
        )


def get_checkpoint(session: Session, *, run_id: int, step: int) -> Checkpoint:
    checkpoint = session.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))
    if checkpoint is None:
        raise NotFound(f"run {run_id} has no checkpoint at step {step}")
    return checkpoint


def find_checkpoint(session: Session, *, run_id: int, step: int) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))


def list_checkpoints(session: Session, *, run_id: int, after: int | None = None, limit: int | None = None,
                     status: str | None = None) -> Sequence[Checkpoint]:
    """A run's checkpoints in step order: those after the step `after`, at most `limit`, with `status`."""
    query = select(Checkpoint).where(Checkpoint.run_id == run_id)
    if after is not None:
        query = query.where(Checkpoint.step > after)
    if status is not None:
        query = query.where(Checkpoint.status == status)
    return session.scalars(query.order_by(Checkpoint.step).limit(limit)).all()


def lock_step(session: Session, *, run_id: int, step: int) -> None:
    """Serialize, until the transaction ends, everything that registers a step or adds files to it."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"step:{run_id}:{step}"})


def insert_checkpoint(session: Session, *, run_id: int, step: int, uri: str, size_bytes: int | None
                      ) -> Checkpoint | None:
    """Insert a checkpoint row (one statement); None when that step already exists."""
    return session.scalars(
        pg_insert(Checkpoint).values(run_id=run_id, step=step, uri=uri, size_bytes=size_bytes)
        .on_conflict_do_nothing(index_elements=[Checkpoint.run_id, Checkpoint.step]).returning(Checkpoint)
    ).first()


def mark_checkpoint(
    session: Session,
    *,
    checkpoint_id: int,
    status: str,
    error: str | None = None,
    size_bytes: int | None = None,
) -> Checkpoint | None:
    values: dict[str, Any] = {"status": status, "error": error, "updated_at": func.now()}
    if size_bytes is not None:
        values["size_bytes"] = size_bytes
    session.execute(update(Checkpoint).where(Checkpoint.id == checkpoint_id).values(**values))
    return session.get(Checkpoint, checkpoint_id, populate_existing=True)


_JOB_COLUMNS = "id, task_name, queue_name, status::text AS status, attempts"


def checkpoint_jobs(session: Session, *, checkpoint_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        text(
            f"SELECT {_JOB_COLUMNS} FROM procrastinate_jobs "
            "WHERE (args->>'checkpoint_id')::bigint = :c ORDER BY id"
        ),
        {"c": checkpoint_id},
    ).mappings()
    return [dict(r) for r in rows]


def get_job(session: Session, *, job_id: int) -> dict[str, Any]:
    row = session.execute(
        text(f"SELECT {_JOB_COLUMNS}, args FROM procrastinate_jobs WHERE id = :id"), {"id": job_id}
    ).mappings().first()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return dict(row)


_ADD_SAMPLES = text(
    """
    INSERT INTO samples (run_id, step, probe_set_id, prompt, response, logprobs)
    SELECT :run_id, :step, :probe_set_id, item.prompt, item.response, CAST(item.logprobs AS jsonb)
      FROM unnest(CAST(:prompts AS text[]), CAST(:responses AS text[]), CAST(:logprobs AS text[]))
           AS item(prompt, response, logprobs)
    """
)


def add_samples(
    session: Session,
    *,
    run_id: int,
    step: int,
    probe_set_id: int | None,
    items: Sequence[dict[str, Any]],
) -> int:
    """Bulk insert: one statement for the whole batch, whatever its size."""
    if not items:
        return 0
    session.execute(_ADD_SAMPLES, {
        "run_id": run_id, "step": step, "probe_set_id": probe_set_id,
        "prompts": [item["prompt"] for item in items],
        "responses": [item["response"] for item in items],
        "logprobs": [None if item.get("logprobs") is None else json.dumps(item["logprobs"]) for item in items],
    })
    return len(items)


def list_samples(session: Session, *, run_id: int, step: int | None, limit: int,
                 after: tuple[int, int] | None = None) -> Sequence[Sample]:
    """A run's samples in (step, id) order: those after the cursor `after` (step, id), at most `limit`."""
    query = select(Sample).where(Sample.run_id == run_id)
    if step is not None:
        query = query.where(Sample.step == step)
    if after is not None:
        query = query.where(tuple_(Sample.step, Sample.id) > tuple_(*after))
    return session.scalars(query.order_by(Sample.step, Sample.id).limit(limit)).all()


def get_probe_set(session: Session, *, name: str) -> tuple[ProbeSet, Sequence[ProbeItem]]:
    probe_set = session.scalar(select(ProbeSet).where(ProbeSet.name == name))
    if probe_set is None:
        raise NotFound(f"no probe set {name!r}; create it with POST /v1/probe-sets")
    items = session.scalars(
        select(ProbeItem).where(ProbeItem.probe_set_id == probe_set.id).order_by(ProbeItem.position)
    ).all()
    return probe_set, items


def list_probe_sets(session: Session, *, after: str | None = None, limit: int | None = None,
                    domain: str | None = None) -> Sequence[ProbeSet]:
    """Probe sets in name order: those after the name `after`, at most `limit`, of `domain`."""
    query = select(ProbeSet)
    if after is not None:
        query = query.where(ProbeSet.name > after)
    if domain is not None:
        query = query.where(ProbeSet.domain == domain)
    return session.scalars(query.order_by(ProbeSet.name).limit(limit)).all()


def create_probe_set(
    session: Session, *, name: str, domain: str, description: str, items: Sequence[dict[str, Any]],
    format: str = "text",
) -> tuple[ProbeSet, bool]:
    """Probe sets are immutable: the same content again is a no-op, different content conflicts.
    Items are dicts with prompt, reference, answer and (chat sets) messages."""
    existing = session.scalar(select(ProbeSet).where(ProbeSet.name == name))
    if existing is not None:
        _, old_items = get_probe_set(session, name=name)
        keys = ("prompt", "reference", "answer", "messages")
        old = [{k: getattr(i, k) for k in keys} for i in old_items]
        new = [{k: i.get(k) for k in keys} for i in items]
        if (existing.domain, existing.description, existing.format, old) != (domain, description, format, new):
            raise Conflict(
                f"probe set {name!r} already exists with other content; probe sets are immutable so "
                f"results stay comparable: create a new name (e.g. {name}-v2)"
            )
        return existing, False
    probe_set = ProbeSet(name=name, domain=domain, description=description, format=format)
    session.add(probe_set)
    session.flush()
    session.execute(
        insert(ProbeItem),
        [
            {
                "probe_set_id": probe_set.id,
                "position": position,
                "prompt": item["prompt"],
                "reference": item.get("reference"),
                "answer": item.get("answer"),
                "messages": item.get("messages"),
            }
            for position, item in enumerate(items)
        ],
    )
    return probe_set, True


def checkpoint_for_analysis(session: Session, *, checkpoint_id: int) -> Any:
    """(uri, step, run_id, base_model) of a checkpoint, or None once it is deleted."""
    return session.execute(
        text("SELECT c.uri, c.step, c.run_id, r.base_model FROM checkpoints c JOIN runs r ON r.id = c.run_id "
             "WHERE c.id = :c"), {"c": checkpoint_id}).first()


def run_checkpoint_ids(session: Session, *, run_id: int) -> list[int]:
    """The run's checkpoint ids in step order."""
    return list(session.scalars(select(Checkpoint.id).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step)))


def previous_checkpoint_uris(session: Session, *, run_id: int, step: int, limit: int = 2) -> list[str]:
    """URIs of the run's checkpoints before `step` that did not fail, latest first."""
    return list(session.scalars(
        select(Checkpoint.uri).where(Checkpoint.run_id == run_id, Checkpoint.step < step,
                                     Checkpoint.status != "failed").order_by(Checkpoint.step.desc()).limit(limit)))


def run_base_model(session: Session, *, run_id: int) -> str | None:
    """The run's base model URI, or None once the run is deleted."""
    return session.scalar(select(Run.base_model).where(Run.id == run_id))


def sample_batch(session: Session, *, run_id: int, step: int, probe_set: str) -> Sequence[Any]:
    """(prompt, response, logprobs) rows pushed for a step and probe set ("" for none), in order."""
    return session.execute(
        select(Sample.prompt, Sample.response, Sample.logprobs)
        .outerjoin(ProbeSet, ProbeSet.id == Sample.probe_set_id)
        .where(Sample.run_id == run_id, Sample.step == step, func.coalesce(ProbeSet.name, "") == probe_set)
        .order_by(Sample.id)).all()


_FAILED_ANALYSES = text(
    "SELECT a.checkpoint_id, a.kind FROM checkpoint_analyses a JOIN checkpoints c ON c.id = a.checkpoint_id "
    "WHERE c.run_id = :r AND a.status = 'failed' ORDER BY c.step, a.kind"
)


def failed_analyses(session: Session, *, run_id: int) -> list[tuple[int, str]]:
    """(checkpoint id, analysis kind) of every failed analysis of the run's checkpoints, by step."""
    return [(int(c), str(k)) for c, k in session.execute(_FAILED_ANALYSES, {"r": run_id})]


_FAILED_SAMPLE_BATCHES = text(
    "SELECT DISTINCT (j.args->>'step')::bigint AS step, j.args->>'probe_set' AS probe_set "
    "FROM procrastinate_jobs j WHERE j.task_name = :task AND j.status = 'failed' "
    "AND (j.args->>'run_id')::bigint = :r AND NOT EXISTS (SELECT 1 FROM sample_drift d WHERE d.run_id = :r "
    "AND d.step = (j.args->>'step')::bigint AND d.probe_set = j.args->>'probe_set') ORDER BY step, probe_set"
)


def failed_sample_batches(session: Session, *, run_id: int, task: str) -> list[tuple[int, str]]:
    """(step, probe set key) of the run's sample batches whose analysis job (`task`, its full name)
    failed and that have no stored result since."""
    return [(int(s), str(p)) for s, p in session.execute(_FAILED_SAMPLE_BATCHES, {"r": run_id, "task": task})]
