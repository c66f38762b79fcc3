"""Core schema: runs, probe sets, checkpoints, samples, tokens, idempotency keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("tags", JSONB, server_default="{}", nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("name", name="uq_runs_name"),
    )
    op.create_table(
        "probe_sets",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("domain", sa.Text, nullable=False),
        sa.Column("description", sa.Text, server_default="", nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_probe_sets"),
        sa.UniqueConstraint("name", name="uq_probe_sets_name"),
        sa.CheckConstraint("domain IN ('in_domain', 'ood')", name="ck_probe_sets_domain"),
    )
    op.create_table(
        "probe_items",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("probe_set_id", sa.BigInteger, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("reference", sa.Text),
        sa.Column("answer", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_probe_items"),
        sa.ForeignKeyConstraint(["probe_set_id"], ["probe_sets.id"], ondelete="CASCADE",
                                name="fk_probe_items_probe_set_id_probe_sets"),
        sa.UniqueConstraint("probe_set_id", "position", name="uq_probe_items_probe_set_id"),
    )
    op.create_table(
        "run_probe_sets",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("probe_set_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "probe_set_id", name="pk_run_probe_sets"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE",
                                name="fk_run_probe_sets_run_id_runs"),
        sa.ForeignKeyConstraint(["probe_set_id"], ["probe_sets.id"], ondelete="CASCADE",
                                name="fk_run_probe_sets_probe_set_id_probe_sets"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("status", sa.Text, server_default="pending", nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE",
                                name="fk_checkpoints_run_id_runs"),
        sa.UniqueConstraint("run_id", "step", name="uq_checkpoints_run_id"),
        sa.CheckConstraint("status IN ('pending', 'processing', 'ready', 'failed')",
                           name="ck_checkpoints_status"),
    )
    op.create_table(
        "samples",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("probe_set_id", sa.BigInteger),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("logprobs", JSONB),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_samples"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_samples_run_id_runs"),
        sa.ForeignKeyConstraint(["probe_set_id"], ["probe_sets.id"], ondelete="SET NULL",
                                name="fk_samples_probe_set_id_probe_sets"),
    )
    op.create_index("ix_samples_run_id_step", "samples", ["run_id", "step"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False),
        _created_at(),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        sa.CheckConstraint("scope IN ('read', 'write')", name="ck_api_tokens_scope"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("token_id", sa.BigInteger, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("status_code", sa.SmallInteger, nullable=False),
        sa.Column("response", JSONB),
        _created_at(),
        sa.PrimaryKeyConstraint("token_id", "key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"], ondelete="CASCADE",
                                name="fk_idempotency_keys_token_id_api_tokens"),
    )


def downgrade() -> None:
    for table in ("idempotency_keys", "api_tokens", "samples", "checkpoints", "run_probe_sets",
                  "probe_items", "probe_sets", "runs"):
        op.drop_table(table)
