"""A token may be limited to a project: the runs and probe sets whose names start with its prefix.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("project", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("api_tokens", "project")
