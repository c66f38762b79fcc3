"""Two forgetting statements per checkpoint: detected (measured, with its interval) and the
forecast's reason code when it abstains; the labelled probe-free heuristic beside them. The base's
own scores per run and probe set, measured by the service (the "step 0" row).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("risk_estimates", sa.Column("reason_code", sa.Text))
    op.add_column("risk_estimates", sa.Column("detected", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("risk_estimates", sa.Column("detection", JSONB, nullable=False, server_default="{}"))
    op.add_column("risk_estimates", sa.Column("heuristic", JSONB, nullable=False, server_default="{}"))
    op.create_table(
        "run_base_scores",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("probe_set_id", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("n_items", sa.Integer),
        *[sa.Column(name, sa.Double) for name in ("accuracy", "loglik", "entropy", "entropy_split_half")],
        sa.Column("error", sa.Text),
        sa.Column("measured_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "probe_set_id", name="pk_run_base_scores"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_run_base_scores_run_id_runs"),
        sa.ForeignKeyConstraint(["probe_set_id"], ["probe_sets.id"], ondelete="CASCADE",
                                name="fk_run_base_scores_probe_set_id_probe_sets"),
        sa.CheckConstraint("status IN ('ready', 'failed')", name="ck_run_base_scores_status"),
    )


def downgrade() -> None:
    op.drop_table("run_base_scores")
    for column in ("heuristic", "detection", "detected", "reason_code"):
        op.drop_column("risk_estimates", column)
