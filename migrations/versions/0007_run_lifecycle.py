"""Runs can be archived: kept with everything measured, hidden from lists, pages and /metrics.
Tokens may have the admin scope (write, and delete runs).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("archived_at", sa.DateTime(timezone=True)))
    op.drop_constraint("ck_api_tokens_scope", "api_tokens", type_="check")
    op.create_check_constraint("ck_api_tokens_scope", "api_tokens", "scope IN ('read', 'write', 'admin')")


def downgrade() -> None:
    op.execute("DELETE FROM api_tokens WHERE scope = 'admin'")
    op.drop_constraint("ck_api_tokens_scope", "api_tokens", type_="check")
    op.create_check_constraint("ck_api_tokens_scope", "api_tokens", "scope IN ('read', 'write')")
    op.drop_column("runs", "archived_at")
