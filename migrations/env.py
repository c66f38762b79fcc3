"""Alembic environment. The URL comes from the caller (`forgetwatch migrate`), never from a file."""

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    raise SystemExit("No database URL given to Alembic; run migrations through `forgetwatch migrate`.")

connectable = create_engine(url, poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
