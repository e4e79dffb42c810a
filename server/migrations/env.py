"""Alembic environment: migrations run against ``edgeloop.server.models.Base``.

The control plane calls :func:`edgeloop.server.db.migrate` on start, which hands its engine
connection in through ``config.attributes["connection"]``; the ``alembic`` command line
(``alembic -c server/migrations/alembic.ini``) and ``edgeloop db`` use the URL instead.
SQLite cannot ALTER most things in place, so migrations run in batch mode there.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from edgeloop.server.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
