"""Pre-flight previews of a stage (its sampled training prompts) and the forecasts made from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.db.models import ProbeItem, ProbeSet, RunStage, StagePreview
from service.errors import NotFound


@dataclass(frozen=True)
class Preview:
    """A stored preview: its prompts, `status` (pending, done, failed), the forecast or the error."""

    stage: str
    prompts: tuple[str, ...]
    status: str
    forecast: dict[str, Any] | None
    error: str | None


def stage_id(session: Session, *, run_id: int, name: str) -> int:
    """The id of the run's stage `name`, or NotFound saying how to declare it."""
    found = session.scalar(select(RunStage.id).where(RunStage.run_id == run_id, RunStage.name == name))
    if found is None:
        raise NotFound(
            f"the run has no stage {name!r}; declare it first with POST /v1/runs/{{run}}/stages, then post "
            "its preview"
        )
    return int(found)


def put_preview(session: Session, *, stage_id: int, prompts: Sequence[str]) -> None:
    """Store the stage's preview, replacing an earlier one and its forecast (pending again)."""
    statement = insert(StagePreview).values(stage_id=stage_id, prompts=list(prompts), status="pending")
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[StagePreview.stage_id],
            set_={"prompts": statement.excluded.prompts, "status": "pending", "forecast": None, "error": None,
                  "updated_at": func.now()},
        )
    )


def get_preview(session: Session, *, run_id: int, name: str) -> Preview | None:
    """The stored preview of the run's stage `name`, or None."""
    row = session.execute(
        select(StagePreview.prompts, StagePreview.status, StagePreview.forecast, StagePreview.error)
        .join(RunStage, RunStage.id == StagePreview.stage_id)
        .where(RunStage.run_id == run_id, RunStage.name == name)
    ).one_or_none()
    if row is None:
        return None
    return Preview(name, tuple(row.prompts), row.status, row.forecast, row.error)


def run_previews(session: Session, *, run_id: int) -> dict[str, tuple[str, ...]]:
    """Stage name -> the prompts of its stored preview, for the run's stages that have one."""
    rows = session.execute(
        select(RunStage.name, StagePreview.prompts)
        .join(StagePreview, StagePreview.stage_id == RunStage.id)
        .where(RunStage.run_id == run_id)
    ).all()
    return {row.name: tuple(row.prompts) for row in rows}


def run_forecasts(session: Session, *, run_id: int) -> dict[str, dict[str, Any]]:
    """Stage name -> the stored forecast, for the run's stages whose preview has one, in stage order."""
    rows = session.execute(
        select(RunStage.name, StagePreview.forecast)
        .join(StagePreview, StagePreview.stage_id == RunStage.id)
        .where(RunStage.run_id == run_id, StagePreview.status == "done", StagePreview.forecast.is_not(None))
        .order_by(RunStage.position)
    ).all()
    return {row.name: row.forecast for row in rows}


def finish_preview(
    session: Session,
    *,
    stage_id: int,
    prompts: Sequence[str],
    forecast: dict[str, Any] | None,
    error: str | None = None,
) -> bool:
    """Store the forecast (or the error) of the preview made of `prompts`; False, storing nothing, when
    the preview was replaced meanwhile (its own job will answer it)."""
    result = session.execute(
        update(StagePreview)
        .where(StagePreview.stage_id == stage_id, StagePreview.prompts == list(prompts))
        .values(status="failed" if error else "done", forecast=forecast, error=error, updated_at=func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def probe_set_prompts(session: Session, *, names: Sequence[str]) -> dict[str, list[str]]:
    """Probe set name -> the prompts of its items in position order."""
    out: dict[str, list[str]] = {name: [] for name in names}
    if not names:
        return out
    rows = session.execute(
        select(ProbeSet.name, ProbeItem.prompt)
        .join(ProbeItem, ProbeItem.probe_set_id == ProbeSet.id)
        .where(ProbeSet.name.in_(list(names)))
        .order_by(ProbeSet.name, ProbeItem.position)
    )
    for name, prompt in rows:
        out[name].append(prompt)
    return out
