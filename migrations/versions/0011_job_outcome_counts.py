"""Finished jobs counted as they finish (a rollup kept by a trigger on procrastinate's jobs table), so
a `/metrics` scrape reads a few rows instead of aggregating the whole job history.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_outcome_counts",
        sa.Column("task_name", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("jobs", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("task_name", "outcome", name="pk_job_outcome_counts"),
    )
    op.execute("""
        INSERT INTO job_outcome_counts (task_name, outcome, jobs)
        SELECT task_name, status::text, count(*) FROM procrastinate_jobs
         WHERE status IN ('succeeded', 'failed') GROUP BY task_name, status
    """)
    op.execute("""
        CREATE FUNCTION forgetwatch_count_job_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO job_outcome_counts (task_name, outcome, jobs) VALUES (NEW.task_name, NEW.status::text, 1)
            ON CONFLICT (task_name, outcome) DO UPDATE SET jobs = job_outcome_counts.jobs + 1;
            RETURN NEW;
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER forgetwatch_count_job_outcome AFTER UPDATE OF status ON procrastinate_jobs
        FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION forgetwatch_count_job_outcome()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER forgetwatch_count_job_outcome ON procrastinate_jobs")
    op.execute("DROP FUNCTION forgetwatch_count_job_outcome()")
    op.drop_table("job_outcome_counts")
