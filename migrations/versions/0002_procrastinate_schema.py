"""procrastinate's job-queue schema, applied through the same history as ours.

The SQL is procrastinate 3.10's `schema.sql`, vendored so that this revision never changes
under a package upgrade; pyproject pins procrastinate to 3.10.x. A later procrastinate gets
its own revision applying procrastinate's migration files.

Revision ID: 0002
Revises: 0001
"""

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "procrastinate_3_10_schema.sql"


def upgrade() -> None:
    op.get_bind().exec_driver_sql(SCHEMA_SQL.read_text(encoding="utf-8").replace("%", "%%"))


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
            procrastinate_jobs, procrastinate_workers CASCADE;
        DO $$
        DECLARE f record;
        BEGIN
            FOR f IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
                     JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%'
            LOOP
                EXECUTE 'DROP FUNCTION IF EXISTS ' || f.sig || ' CASCADE';
            END LOOP;
        END $$;
        DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
            procrastinate_job_status CASCADE;
        """
    )
