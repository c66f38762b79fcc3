"""Deleting a run: its rows (the schema cascades to everything measured for it), then its uploads.
Shared caches (base top-k, spectral SVDs) are keyed by base model and stay for other runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy.orm import Session

from service.db import queries
from service.db.models import Run
from service.settings import Settings


def run_uploads(settings: Settings, run_id: int) -> Path:
    return settings.uploads_dir / str(run_id)


def delete_run(session: Session, settings: Settings, run: Run) -> None:
    """Commits the deletion, then removes the files: a crash in between leaves files, never rows
    that point at missing files."""
    run_id = run.id
    queries.delete_run(session, run=run)
    session.commit()
    shutil.rmtree(run_uploads(settings, run_id), ignore_errors=True)
