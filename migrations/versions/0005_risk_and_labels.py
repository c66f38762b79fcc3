"""Collapse risk per checkpoint (value, forecasts, findings) and ground-truth labels per step.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "risk_estimates",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("applicable", sa.Boolean, nullable=False),
        sa.Column("value", sa.Double),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("changepoint", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("features", JSONB, nullable=False),
        sa.Column("forecasts", JSONB, nullable=False),
        sa.Column("findings", JSONB, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", name="pk_risk_estimates"),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"], ondelete="CASCADE",
                                name="fk_risk_estimates_checkpoint_id_checkpoints"),
    )
    op.create_table(
        "run_labels",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step", "name", name="pk_run_labels"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_run_labels_run_id_runs"),
    )


def downgrade() -> None:
    op.drop_table("run_labels")
    op.drop_table("risk_estimates")
