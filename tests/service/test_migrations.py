from sqlalchemy import inspect

from service.db import migrate
from service.db.session import make_engine


def _tables(url: str) -> set[str]:
    engine = make_engine(url, pool_size=1)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    tables = _tables(empty_database_url)
    assert {"runs", "checkpoints", "samples", "probe_sets", "probe_items", "api_tokens",
            "procrastinate_jobs", "procrastinate_events"} <= tables

    migrate.downgrade(empty_database_url, "base")
    assert _tables(empty_database_url) <= {"alembic_version"}

    migrate.upgrade(empty_database_url)
    assert _tables(empty_database_url) == tables


def test_head_matches_after_upgrade(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    engine = make_engine(empty_database_url, pool_size=1)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()
