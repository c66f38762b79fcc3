"""Sequential shift evidence of pushed samples: each batch's paired embeddings (the base's responses
and the checkpoint's, float32 rows) and the run's e-process after each batch; per-prompt similarity
to the base as a distribution (p10, share below 0.9, counts per fixed bin).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sample_drift", sa.Column("shift_evalue", sa.Double, nullable=True))
    op.add_column("sample_drift", sa.Column("shift_evalue_max", sa.Double, nullable=True))
    op.add_column("sample_drift", sa.Column("similarity_p10", sa.Double, nullable=True))
    op.add_column("sample_drift", sa.Column("similarity_low_ratio", sa.Double, nullable=True))
    op.add_column("sample_drift", sa.Column("similarity_histogram", sa.ARRAY(sa.Integer), nullable=True))
    op.create_table(
        "sample_embeddings",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("probe_set", sa.Text, nullable=False, server_default=""),
        sa.Column("n_pairs", sa.Integer, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("reference", sa.LargeBinary, nullable=False),
        sa.Column("current", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step", "probe_set", name="pk_sample_embeddings"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], ondelete="CASCADE", name="fk_sample_embeddings_run_id_runs"
        ),
        sa.CheckConstraint("n_pairs >= 0 AND dim > 0", name="ck_sample_embeddings_shape"),
    )


def downgrade() -> None:
    op.drop_table("sample_embeddings")
    for column in ("similarity_histogram", "similarity_low_ratio", "similarity_p10", "shift_evalue_max"):
        op.drop_column("sample_drift", column)
    op.drop_column("sample_drift", "shift_evalue")
