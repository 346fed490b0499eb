from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from postroom.db import Base, create_db_engine
from postroom.schema import VERSION_TABLE, downgrade, load_models, upgrade


def test_migrations_produce_exactly_the_tables_the_models_declare(database_url):
    load_models()
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_migrating_twice_is_harmless_and_round_trips_through_downgrade(database_url):
    engine = create_db_engine(database_url)
    upgrade(engine)
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {VERSION_TABLE}
    upgrade(engine)
    assert {"postroom_messages", "postroom_events", "postroom_api_keys"} <= set(
        inspect(engine).get_table_names()
    )
    indexes = {index["name"] for index in inspect(engine).get_indexes("postroom_messages")}
    assert {"ix_postroom_messages_due", "ix_postroom_messages_lease"} <= indexes
    engine.dispose()
