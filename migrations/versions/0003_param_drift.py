"""Parameter-drift results: per-tensor rows, per-scope summaries, the per-shard work plan, and the
status of each analysis of a checkpoint.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_FLOAT = sa.Double


def upgrade() -> None:
    op.create_table(
        "checkpoint_analyses",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("error", sa.Text),
        sa.Column("details", JSONB, nullable=False, server_default="{}"),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "kind", name="pk_checkpoint_analyses"),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"], ondelete="CASCADE",
                                name="fk_checkpoint_analyses_checkpoint_id_checkpoints"),
        sa.CheckConstraint("status IN ('pending', 'processing', 'ready', 'failed')",
                           name="ck_checkpoint_analyses_status"),
    )
    op.create_table(
        "param_drift_parts",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("tensor_names", JSONB, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("checkpoint_id", "part", name="pk_param_drift_parts"),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"], ondelete="CASCADE",
                                name="fk_param_drift_parts_checkpoint_id_checkpoints"),
    )
    op.create_table(
        "param_drift_tensors",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("block", sa.Integer),
        sa.Column("module_kind", sa.Text, nullable=False),
        sa.Column("numel", sa.BigInteger, nullable=False),
        sa.Column("l2_distance", _FLOAT),
        sa.Column("relative_l2_distance", _FLOAT),
        sa.Column("cosine_similarity", _FLOAT),
        sa.Column("update_cosine_similarity", _FLOAT),
        sa.Column("normalized_spectral_shift", _FLOAT),
        sa.Column("max_principal_angle_deg", _FLOAT),
        sa.Column("nan_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("inf_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("data", JSONB, nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "name", name="pk_param_drift_tensors"),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"], ondelete="CASCADE",
                                name="fk_param_drift_tensors_checkpoint_id_checkpoints"),
    )
    op.create_table(
        "param_drift_summaries",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("numel", sa.BigInteger, nullable=False),
        sa.Column("l2_distance", _FLOAT),
        sa.Column("relative_l2_distance", _FLOAT),
        sa.Column("cosine_similarity", _FLOAT),
        sa.Column("update_cosine_similarity", _FLOAT),
        sa.Column("changed_ratio", _FLOAT),
        sa.Column("normalized_spectral_shift", _FLOAT),
        sa.Column("max_principal_angle_deg", _FLOAT),
        sa.Column("principal_overlap_ratio", _FLOAT),
        sa.Column("principal_update_energy_ratio", _FLOAT),
        sa.Column("nan_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("inf_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("data", JSONB, nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "scope", "key", name="pk_param_drift_summaries"),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"], ondelete="CASCADE",
                                name="fk_param_drift_summaries_checkpoint_id_checkpoints"),
        sa.CheckConstraint("scope IN ('global', 'block', 'module')", name="ck_param_drift_summaries_scope"),
    )


def downgrade() -> None:
    for table in ("param_drift_summaries", "param_drift_tensors", "param_drift_parts", "checkpoint_analyses"):
        op.drop_table(table)
