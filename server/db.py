"""Engine, sessions and schema migrations.

SQLite gets WAL and a busy timeout so the MQTT thread and API threads can write side by side;
any other URL (PostgreSQL: ``postgresql+psycopg://user@host/db``) is used as given. The schema
is owned by Alembic (``server/migrations``): :func:`make_engine` brings a database to the
newest revision before anything touches it, so an operator upgrading edgeloop keeps their
fleet's history.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("edgeloop.server.db")
# Alembic logs each plugin it loads at INFO on every start; only its warnings matter here.
logging.getLogger("alembic").setLevel(logging.WARNING)

# The tables the first revision creates: a database that has them but no alembic_version
# was made by an early build's create_all and is stamped at that revision, not re-created.
_INITIAL_REVISION = "0001"
_INITIAL_TABLES = {"devices", "artifacts", "model_versions", "desired_states", "reports"}


def make_engine(url: str, *, migrate_schema: bool = True) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    if migrate_schema:
        migrate(engine)
    return engine


def alembic_config(url: str | None = None):
    """An Alembic config pointing at the bundled migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (idempotent).

    Runs in one transaction on PostgreSQL (DDL is transactional there), so a failed upgrade
    leaves the previous schema intact.
    """
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and _INITIAL_TABLES <= tables:
            log.warning("database predates migrations; stamping it at %s", _INITIAL_REVISION)
            command.stamp(config, _INITIAL_REVISION)
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
