"""Two forgetting statements per checkpoint: detected (measured, with its interval) and the
forecast's reason code when it abstains; the labelled probe-free heuristic beside them.

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


def downgrade() -> None:
    for column in ("heuristic", "detection", "detected", "reason_code"):
        op.drop_column("risk_estimates", column)
