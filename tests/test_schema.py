from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from postroom.client import Postroom
from postroom.db import Base, create_db_engine
from postroom.revisions import SchemaRevision, known_revisions, schema_revision
from postroom.schema import VERSION_TABLE, alembic_config, downgrade, load_models, upgrade


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


def _body_compression(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT attname, attcompression FROM pg_attribute"
                " WHERE attrelid = 'postroom_messages'::regclass AND attname IN ('text', 'html')"
            )
        )
        return {name: method for name, method in rows}


def test_message_bodies_are_stored_lz4_compressed_on_postgresql(
    postgres_database_url, make_settings
):
    engine = create_db_engine(postgres_database_url)
    with engine.connect() as connection:
        offered = connection.execute(
            text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar()
    if not offered or "lz4" not in offered:
        engine.dispose()
        pytest.skip("this PostgreSQL server was built without LZ4")
    client = Postroom(make_settings(database_url=postgres_database_url), publish=lambda *_: None)
    # varied enough not to shrink below PostgreSQL's 2 kB threshold for moving it out of line
    html = "".join(f"<p>Line {n}: {n * 7919 % 104729}</p>" for n in range(3000))
    message = client.send("ada@example.com", "A long one", html=html)
    with engine.connect() as connection:
        stored = connection.execute(
            text(
                "SELECT pg_column_compression(html), pg_column_compression(text), html"
                " FROM postroom_messages WHERE id = :id"
            ),
            {"id": message.id},
        ).one()
    assert stored[:2] == ("lz4", "lz4")
    assert stored[2] == html
    assert _body_compression(engine) == {"text": "l", "html": "l"}

    downgrade(engine, "0006")
    assert _body_compression(engine) == {"text": "", "html": ""}
    upgrade(engine)
    assert _body_compression(engine) == {"text": "l", "html": "l"}
    client.close()
    engine.dispose()


def test_the_revisions_read_without_alembic_are_alembic_s_own(sqlite_url):
    engine = create_db_engine(sqlite_url)
    script = ScriptDirectory.from_config(alembic_config(engine))
    assert known_revisions() == tuple(r.revision for r in reversed(list(script.walk_revisions())))
    assert schema_revision(engine) == SchemaRevision(
        current=script.get_current_head(), head=known_revisions()[-1], known=True
    )
    downgrade(engine, "0005")
    behind = schema_revision(engine)
    assert behind.behind and "at revision 0005, this postroom needs" in behind.describe()
    downgrade(engine, "base")
    assert schema_revision(engine).describe() == "the database has no postroom tables"
    engine.dispose()
