"""SQLAlchemy models. The schema itself is created only by Alembic migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    base_model: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    tags: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[datetime] = _now()
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProbeSet(Base):
    __tablename__ = "probe_sets"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    domain: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default="")
    format: Mapped[str] = mapped_column(Text, server_default="text")
    created_at: Mapped[datetime] = _now()


class ProbeItem(Base):
    __tablename__ = "probe_items"
    __table_args__ = (UniqueConstraint("probe_set_id", "position"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    probe_set_id: Mapped[int] = mapped_column(ForeignKey("probe_sets.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSONB)


class RunProbeSet(Base):
    __tablename__ = "run_probe_sets"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    probe_set_id: Mapped[int] = mapped_column(
        ForeignKey("probe_sets.id", ondelete="CASCADE"), primary_key=True
    )


class RunStage(Base):
    """One stage of a run: from `start_step` until the next stage's, it trains for its probe sets."""

    __tablename__ = "run_stages"
    __table_args__ = (UniqueConstraint("run_id", "name"),
                      UniqueConstraint("run_id", "position", name="uq_run_stages_run_id_position"),
                      UniqueConstraint("run_id", "start_step", name="uq_run_stages_run_id_start_step"))
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    start_step: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _now()


class RunStageProbeSet(Base):
    __tablename__ = "run_stage_probe_sets"
    stage_id: Mapped[int] = mapped_column(ForeignKey("run_stages.id", ondelete="CASCADE"), primary_key=True)
    probe_set_id: Mapped[int] = mapped_column(ForeignKey("probe_sets.id", ondelete="CASCADE"), primary_key=True)


class StagePreview(Base):
    """A sample of a stage's training prompts posted before it runs, and the forecast made from them."""

    __tablename__ = "stage_previews"
    stage_id: Mapped[int] = mapped_column(ForeignKey("run_stages.id", ondelete="CASCADE"), primary_key=True)
    prompts: Mapped[list[str]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    forecast: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Sample(Base):
    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(BigInteger)
    probe_set_id: Mapped[int | None] = mapped_column(ForeignKey("probe_sets.id", ondelete="SET NULL"))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    logprobs: Mapped[list[float] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    project: Mapped[str | None] = mapped_column(Text)
    """Name prefix of the runs and probe sets this token may write (None: all)."""


class IdempotencyRecord(Base):
    """The first response to a POST/PUT carrying an `Idempotency-Key`, replayed on retries."""

    __tablename__ = "idempotency_keys"
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    method: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(SmallInteger)
    response: Mapped[Any] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class TrainingMetric(Base):
    """A value the trainer reported at a step (loss, reward, entropy, KL to the reference, ...)."""

    __tablename__ = "training_metrics"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float] = mapped_column(Double)
    recorded_at: Mapped[datetime] = _now()
