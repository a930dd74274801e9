"""Alembic environment: uses the engine handed over by tally.store.migrate."""

from alembic import context
from sqlalchemy import create_engine

from tally.store.db import WRITE_LOCK_SQL

config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url") or "")
postgres = engine.dialect.name == "postgresql"
if postgres:  # each statement after the lock sees what was committed while it waited
    engine = engine.execution_options(isolation_level="READ COMMITTED")

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        if postgres:
            # Processes starting at once on a new database migrate one at a time: the write lock comes before
            # alembic reads the current revision, and PostgreSQL's DDL commits or rolls back with the transaction.
            connection.exec_driver_sql(WRITE_LOCK_SQL)
        context.run_migrations()
    connection.commit()
