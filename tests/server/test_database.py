"""The schema is owned by migrations, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from edgeloop.server.db import alembic_config, current_revision, make_engine, migrate
from edgeloop.server.models import Base

INSERT_ARTIFACT = text(
    "INSERT INTO artifacts (sha256, size, created_at) VALUES ('a', 1, CURRENT_TIMESTAMP)"
)


def test_a_new_database_is_migrated_to_the_newest_revision_matching_the_models(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is not None
    with engine.connect() as connection:
        # Autogenerate finds nothing to do: the migrations and the models agree.
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    engine.dispose()


def test_migrating_twice_changes_nothing_and_keeps_the_rows(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(INSERT_ARTIFACT)
    engine.dispose()
    again = make_engine(database_url)
    with again.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM artifacts")).scalar() == 1
    again.dispose()


def test_a_database_made_before_migrations_is_stamped_not_recreated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    # What builds before migrations made with create_all: the tables of revision 0001.
    before = ["artifacts", "devices", "model_versions", "desired_states", "reports",
              "telemetry", "rollouts", "rollout_devices"]  # fmt: skip
    Base.metadata.create_all(old, tables=[Base.metadata.tables[name] for name in before])
    with old.begin() as connection:
        connection.execute(text("ALTER TABLE devices DROP COLUMN protocol"))  # came with 0003
        connection.execute(text("ALTER TABLE devices DROP COLUMN revoked_at"))  # came with 0005
        connection.execute(text("DROP INDEX ix_model_versions_application"))
        for table, column in (  # came with 0006
            ("devices", "application"),
            ("devices", "application_source"),
            ("devices", "declared_application"),
            ("model_versions", "application"),
            ("model_versions", "pareto_sha256"),  # came with 0007
        ):
            connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        connection.execute(INSERT_ARTIFACT)
    old.dispose()
    engine = make_engine(url)
    assert current_revision(engine) is not None
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM artifacts")).scalar() == 1
    engine.dispose()


def test_downgrade_to_nothing_and_back_up(database_url: str) -> None:
    engine = make_engine(database_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)
    assert "rollouts" in inspect(engine).get_table_names()
    engine.dispose()


def test_an_older_revision_upgrades_in_place_keeping_its_rows(database_url: str) -> None:
    engine = make_engine(database_url, migrate_schema=False)
    migrate(engine, "0001")
    with engine.begin() as connection:
        connection.execute(INSERT_ARTIFACT)
    assert "loop_decisions" not in inspect(engine).get_table_names()
    migrate(engine)
    assert {"loop_decisions", "calibrations"} <= set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM artifacts")).scalar() == 1
    engine.dispose()
