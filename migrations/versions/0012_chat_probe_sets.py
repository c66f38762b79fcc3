"""Chat probe sets: `probe_sets.format` ('text' or 'chat') and `probe_items.messages` (the conversation
of a chat item; its `prompt` holds the last user turn for display).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("probe_sets", sa.Column("format", sa.Text, nullable=False, server_default="text"))
    op.create_check_constraint("ck_probe_sets_format", "probe_sets", "format IN ('text', 'chat')")
    op.add_column("probe_items", sa.Column("messages", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("probe_items", "messages")
    op.drop_constraint("ck_probe_sets_format", "probe_sets", type_="check")
    op.drop_column("probe_sets", "format")
