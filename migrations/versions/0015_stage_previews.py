"""Pre-flight previews of a stage: a sample of its training prompts, posted before it runs, and the
forgetting forecast per retention set computed from them.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stage_previews",
        sa.Column("stage_id", sa.BigInteger, nullable=False),
        sa.Column("prompts", JSONB, nullable=False),
        sa.Column("status", sa.Text, server_default="pending", nullable=False),
        sa.Column("forecast", JSONB, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("stage_id", name="pk_stage_previews"),
        sa.ForeignKeyConstraint(
            ["stage_id"], ["run_stages.id"], ondelete="CASCADE", name="fk_stage_previews_stage_id_run_stages"
        ),
        sa.CheckConstraint("status IN ('pending', 'done', 'failed')", name="ck_stage_previews_status"),
    )


def downgrade() -> None:
    op.drop_table("stage_previews")
