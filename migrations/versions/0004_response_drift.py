"""Response-drift results: the base model's cached probe side, per-probe-set and per-probe
divergences and forgetting per checkpoint, and embedding shift / diversity of pushed samples.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

F = sa.Double


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], ondelete="CASCADE",
                                   name=f"fk_{table}_{column}_{target}")


def upgrade() -> None:
    op.drop_constraint("ck_checkpoint_analyses_status", "checkpoint_analyses", type_="check")
    op.create_check_constraint("ck_checkpoint_analyses_status", "checkpoint_analyses",
                               "status IN ('pending', 'processing', 'ready', 'failed', 'skipped')")
    op.create_table(
        "probe_base_caches",
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("probe_set_id", sa.BigInteger, nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("base_model", "probe_set_id", "k", name="pk_probe_base_caches"),
        _fk("probe_base_caches", "probe_set_id", "probe_sets"),
    )
    op.create_table(
        "probe_drift",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("probe_set_id", sa.BigInteger, nullable=False),
        sa.Column("domain", sa.Text, nullable=False),
        *[sa.Column(name, F) for name in (
            "kl_forward", "kl_forward_p10", "kl_forward_p25", "kl_forward_p50", "kl_forward_p90",
            "kl_reverse", "kl_reverse_p90", "total_variation", "entropy", "agreement",
            "loglik", "loglik_base", "loglik_change", "loglik_ci_low", "loglik_ci_high",
            "accuracy", "accuracy_base", "accuracy_change", "accuracy_ci_low", "accuracy_ci_high")],
        sa.Column("data", JSONB, nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "probe_set_id", name="pk_probe_drift"),
        _fk("probe_drift", "checkpoint_id", "checkpoints"),
        _fk("probe_drift", "probe_set_id", "probe_sets"),
    )
    op.create_table(
        "probe_drift_items",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("probe_set_id", sa.BigInteger, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        *[sa.Column(name, F) for name in ("forward_kl", "reverse_kl", "total_variation", "entropy",
                                          "top1_agreement", "mean_logprob", "base_mean_logprob")],
        sa.Column("correct", sa.Boolean),
        sa.PrimaryKeyConstraint("checkpoint_id", "probe_set_id", "position", name="pk_probe_drift_items"),
        _fk("probe_drift_items", "checkpoint_id", "checkpoints"),
        _fk("probe_drift_items", "probe_set_id", "probe_sets"),
    )
    op.create_table(
        "sample_drift",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("probe_set", sa.Text, nullable=False, server_default=""),
        sa.Column("n_samples", sa.Integer, nullable=False),
        *[sa.Column(name, F) for name in (
            "mmd2", "shift_pvalue", "classifier_auc", "centroid_distance", "similarity_median",
            "similarity_p25", "distinct1", "distinct2", "distinct2_base", "repetition_ratio",
            "degenerate_ratio", "length_mean", "length_std", "sample_entropy")],
        sa.Column("shift_detected", sa.Boolean),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step", "probe_set", name="pk_sample_drift"),
        _fk("sample_drift", "run_id", "runs"),
    )


def downgrade() -> None:
    for table in ("sample_drift", "probe_drift_items", "probe_drift", "probe_base_caches"):
        op.drop_table(table)
    op.execute("DELETE FROM checkpoint_analyses WHERE status = 'skipped'")
    op.drop_constraint("ck_checkpoint_analyses_status", "checkpoint_analyses", type_="check")
    op.create_check_constraint("ck_checkpoint_analyses_status", "checkpoint_analyses",
                               "status IN ('pending', 'processing', 'ready', 'failed')")
