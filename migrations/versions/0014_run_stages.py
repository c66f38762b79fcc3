"""Stages of a run (name, start step, the probe sets each trains for) and what the transfer matrix
needs per probe item: its token count, whether it was scored on a reference completion, and whether
the base answered it correctly.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_stages",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("start_step", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_run_stages"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_run_stages_run_id_runs"
        ),
        sa.UniqueConstraint("run_id", "name", name="uq_run_stages_run_id"),
        sa.UniqueConstraint("run_id", "position", name="uq_run_stages_run_id_position"),
        sa.UniqueConstraint("run_id", "start_step", name="uq_run_stages_run_id_start_step"),
        sa.CheckConstraint("position >= 1", name="ck_run_stages_position"),
        sa.CheckConstraint("start_step >= 0", name="ck_run_stages_start_step"),
    )
    op.create_table(
        "run_stage_probe_sets",
        sa.Column("stage_id", sa.BigInteger, nullable=False),
        sa.Column("probe_set_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("stage_id", "probe_set_id", name="pk_run_stage_probe_sets"),
        sa.ForeignKeyConstraint(
            ["stage_id"],
            ["run_stages.id"],
            ondelete="CASCADE",
            name="fk_run_stage_probe_sets_stage_id_run_stages",
        ),
        sa.ForeignKeyConstraint(
            ["probe_set_id"],
            ["probe_sets.id"],
            ondelete="CASCADE",
            name="fk_run_stage_probe_sets_probe_set_id_probe_sets",
        ),
    )
    op.add_column("probe_drift_items", sa.Column("n_tokens", sa.Integer, nullable=True))
    op.add_column("probe_drift_items", sa.Column("from_reference", sa.Boolean, nullable=True))
    op.add_column("probe_drift_items", sa.Column("base_correct", sa.Boolean, nullable=True))


def downgrade() -> None:
    for column in ("base_correct", "from_reference", "n_tokens"):
        op.drop_column("probe_drift_items", column)
    op.drop_table("run_stage_probe_sets")
    op.drop_table("run_stages")
