from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from drift.remote import RemotePath
from service.api.deps import IdempotencyKey, Principal, Reader, SessionDep, SettingsDep, Writer
from service.api.idempotency import remember, replay, request_fingerprint, run_idempotent
from service.api.pagination import LINK_HEADER, Limit, StepCursor, page
from service.api.schemas import CheckpointCreate, CheckpointOut, JobOut, UploadOut
from service.db import queries
from service.db.models import Checkpoint
from service.errors import Conflict, InsufficientStorage, Unprocessable
from service.lifecycle import run_uploads
from service.paths import directory_size, resolve_location
from service.queue.defer import enqueue_new_checkpoint
from service.settings import Settings

router = APIRouter(prefix="/v1/runs/{run_ref}/checkpoints", tags=["checkpoints"])

SAFE_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]{0,254}$")
# Checked in the route (for its message) and stated in the schema.
FileName = Annotated[str, PathParam(json_schema_extra={"pattern": SAFE_FILENAME.pattern})]
StepParam = Annotated[int, PathParam(ge=0, le=2**53)]


def checkpoint_out(session: Session, checkpoint: Checkpoint) -> CheckpointOut:
    jobs = [
        JobOut(id=j["id"], task=j["task_name"], queue=j["queue_name"], status=j["status"], attempts=j["attempts"])
        for j in queries.checkpoint_jobs(session, checkpoint_id=checkpoint.id)
    ]
    return CheckpointOut(
        id=checkpoint.id, run_id=checkpoint.run_id, step=checkpoint.step, uri=checkpoint.uri,
        size_bytes=checkpoint.size_bytes, status=checkpoint.status, error=checkpoint.error,
        received_at=checkpoint.received_at, jobs=jobs,
    )


def upload_dir(settings: Settings, run_id: int, step: int) -> Path:
    return run_uploads(settings, run_id) / str(step)


def _checkpoint_path(settings: Settings, run_id: int, body: CheckpointCreate) -> Path | RemotePath:
    if body.uri is not None:
        path = resolve_location(body.uri, settings.allowed_roots, settings.remote_prefixes,
                          hf_cache=settings.hf_cache_dir)
        if isinstance(path, RemotePath):
            return path  # not fetched here: the workers read it and fail the analysis with the reason
        if not path.exists():
            raise Unprocessable(f"checkpoint path {body.uri!r} does not exist on the service's disk")
        return path
    path = upload_dir(settings, run_id, body.step)
    if not path.is_dir() or not any(path.iterdir()):
        raise Unprocessable(
            f"no uri given and no files uploaded for step {body.step}; give a uri or upload the files "
            f"first with PUT /v1/runs/{run_id}/checkpoints/{body.step}/files/{{filename}}"
        )
    return path


@router.post("", status_code=202, response_model=CheckpointOut,
             responses={200: {"model": CheckpointOut, "description": "Already registered, identical"}})
def register_checkpoint(run_ref: str, body: CheckpointCreate, request: Request, session: SessionDep,
                        settings: SettingsDep, principal: Writer,
                        idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Register a checkpoint; 202 once the row and its jobs are committed."""

    def action() -> tuple[int, CheckpointOut]:
        run = queries.get_run(session, ref=run_ref)
        queries.lock_step(session, run_id=run.id, step=body.step)  # no upload lands while it registers
        path = _checkpoint_path(settings, run.id, body)
        created = queries.insert_checkpoint(session, run_id=run.id, step=body.step, uri=str(path),
                                            size_bytes=None if isinstance(path, RemotePath) else directory_size(path))
        if created is not None:
            probes = "probes" in settings.analyses and bool(queries.run_probe_set_names(session, run_id=run.id))
            enqueue_new_checkpoint(session, created.id, params="params" in settings.analyses, probes=probes)
            return 202, checkpoint_out(session, created)
        existing = queries.get_checkpoint(session, run_id=run.id, step=body.step)
        if existing.uri != str(path):
            raise Conflict(
                f"step {body.step} of run {run.name!r} is already registered with uri {existing.uri!r}; "
                "checkpoints are immutable: register the new one under its own step"
            )
        return 200, checkpoint_out(session, existing)

    return run_idempotent(session, principal=principal, key=idempotency_key, method="POST",
                          path=request.url.path, payload=body.model_dump_json(), action=action)


@router.get("", response_model=list[CheckpointOut], responses=LINK_HEADER)
def list_checkpoints(run_ref: str, request: Request, response: Response, session: SessionDep, _: Reader,
                     limit: Limit = 100, after: StepCursor = None,
                     status: Annotated[Literal["pending", "processing", "ready", "failed"] | None,
                                       Query(description="only checkpoints in this state")] = None,
                     ) -> list[CheckpointOut]:
    """A run's checkpoints in step order, a page at a time; the `Link` header points to the next page."""
    run = queries.get_run(session, ref=run_ref)
    rows = queries.list_checkpoints(session, run_id=run.id, after=after, limit=limit + 1, status=status)
    return [checkpoint_out(session, c) for c in page(request, response, rows, limit=limit, cursor=lambda c: c.step)]


@router.get("/{step}", response_model=CheckpointOut)
def get_checkpoint(run_ref: str, step: StepParam, session: SessionDep, _: Reader) -> CheckpointOut:
    run = queries.get_run(session, ref=run_ref)
    return checkpoint_out(session, queries.get_checkpoint(session, run_id=run.id, step=step))


def _open_step(request: Request, run_ref: str, step: int) -> int:
    """The run's id, when `step` still takes uploads (409 once it is registered)."""
    with request.app.state.sessions() as session:
        run = queries.get_run(session, ref=run_ref)
        if queries.find_checkpoint(session, run_id=run.id, step=step) is not None:
            raise Conflict(f"step {step} of run {run.name!r} is already registered; its files are immutable")
        return run.id


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_upload(request: Request, principal: Principal, *, run_id: int, step: int, key: str | None,
                 fingerprint: str, partial: Path, target: Path, body: dict) -> JSONResponse:
    """Move a fully written (and fsynced) upload into place, once per key and never into a
    registered step: the step's lock is the one registration takes, so a PUT that began before
    registration cannot replace a file of the registered checkpoint."""
    with request.app.state.sessions() as session:
        if key is not None:
            stored = replay(session, principal=principal, key=key, fingerprint=fingerprint)
            if stored is not None:
                return stored  # the same bytes were kept by the first request; this copy is dropped
        queries.lock_step(session, run_id=run_id, step=step)
        if queries.find_checkpoint(session, run_id=run_id, step=step) is not None:
            raise Conflict(f"step {step} was registered while this file was uploading; its files are "
                           "immutable, nothing was kept of this upload")
        os.replace(partial, target)
        _fsync_dir(target.parent)
        if key is not None:
            remember(session, principal=principal, key=key, fingerprint=fingerprint, method="PUT",
                     path=request.url.path, status_code=201, body=body)
        session.commit()
    return JSONResponse(body, status_code=201)


@router.put("/{step}/files/{filename:path}", status_code=201, response_model=UploadOut,
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                "type": "string", "format": "binary"}}}, "required": True}})
async def upload_file(run_ref: str, step: StepParam, filename: FileName, request: Request, settings: SettingsDep,
                      principal: Writer, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Stream one checkpoint file to the service (for trainers that share no disk with it).
    Then register the checkpoint with POST .../checkpoints {"step": N} and no uri.

    The file is hashed while it streams and fsynced (file and folder) before the 201; an
    Idempotency-Key is bound to the content, so a retry with other bytes under the same key is 409."""
    if not SAFE_FILENAME.fullmatch(filename):  # '.' and '..' cannot match: the first character is no '.'
        raise Unprocessable(
            f"filename {filename!r} is not allowed: use a plain file name (letters, digits, '.', '_', '-'), "
            "no folders; sharded checkpoints upload each shard under its own name"
        )
    run_id = await run_in_threadpool(_open_step, request, run_ref, step)
    target_dir = upload_dir(settings, run_id, step)
    target = target_dir / filename
    partial = target_dir / f".{filename}.{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    written = 0
    try:
        await anyio.to_thread.run_sync(lambda: target_dir.mkdir(parents=True, exist_ok=True))
        async with await anyio.open_file(partial, "wb") as out:
            async for chunk in request.stream():  # the request guard holds the body to its limit
                written += len(chunk)
                digest.update(chunk)
                await out.write(chunk)
            await out.flush()
            await anyio.to_thread.run_sync(os.fsync, out.wrapped.fileno())
        body = UploadOut(run_id=run_id, step=step, filename=filename, size_bytes=written).model_dump()
        fingerprint = request_fingerprint("PUT", request.url.path, digest.hexdigest())
        return await run_in_threadpool(
            lambda: _keep_upload(request, principal, run_id=run_id, step=step, key=idempotency_key,
                                 fingerprint=fingerprint, partial=partial, target=target, body=body))
    except ClientDisconnect:
        raise Unprocessable("the upload ended before its last byte; nothing was kept, send the file again") from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                "the service's data dir is out of space; nothing was kept of this upload. "
                "Free space on the service and retry"
            ) from error
        raise
    finally:
        if partial.exists():
            partial.unlink()
