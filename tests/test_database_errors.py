"""A database that cannot do the work raises postroom's own two errors, never SQLAlchemy's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from postroom.batches import BatchInterrupted
from postroom.client import Postroom
from postroom.database_errors import database_errors
from postroom.db import create_db_engine
from postroom.errors import DatabaseNotMigrated, DatabaseUnavailable
from postroom.messages import Message
from postroom.schema import downgrade
from tests.servers import postgres_admin

PASSWORD = "hunter2-s3cret"
# Port 1 refuses connections at once, so the failure is fast and certain.
UNREACHABLE = f"postgresql://postroom:{PASSWORD}@127.0.0.1:1/postroom"


def _calls(client: Postroom) -> dict[str, Any]:
    """Each public way an application reaches the database, as a call to make."""
    return {
        "send": lambda: client.send("a@example.com", "Hi", text="x"),
        "send(html)": lambda: client.send("a@example.com", "Hi", html="<p>x</p>"),
        "asend": lambda: asyncio.run(client.asend("a@example.com", "Hi", text="x")),
        "get_message": lambda: client.get_message("0" * 26),
        "list_messages": lambda: client.list_messages(),
        "cancel": lambda: client.cancel("0" * 26),
        "list_templates": lambda: client.list_templates(),
        "send(template)": lambda: client.send("a@example.com", template="welcome"),
    }


def test_an_unreachable_database_raises_database_unavailable_without_its_password(
    make_settings,
):
    client = Postroom(make_settings(database_url=UNREACHABLE), publish=lambda *_: None)
    try:
        for name, call in _calls(client).items():
            with pytest.raises(DatabaseUnavailable) as raised:
                call()
            error = raised.value
            assert "Connection refused" in str(error), name
            assert "retried with the same idempotency_key is stored once" in str(error), name
            assert error.driver_error == "OperationalError", name
            assert isinstance(error.__cause__, DBAPIError), name  # the original stays chained
            assert PASSWORD not in str(error) and PASSWORD not in str(error.__cause__), name
    finally:
        client.close()


def test_a_batch_on_an_unreachable_database_is_interrupted_before_its_first_item(make_settings):
    client = Postroom(make_settings(database_url=UNREACHABLE), publish=lambda *_: None)
    items = [{"to": "a@example.com", "subject": "Hi", "text": "x"}]
    try:
        with pytest.raises(BatchInterrupted) as raised:
            client.send_batch(items)
    finally:
        client.close()
    assert raised.value.index == 0
    assert raised.value.result.accepted == 0
    assert str(raised.value).startswith("messages[0:]: the database is unavailable")


def test_a_database_without_postroom_tables_raises_database_not_migrated(
    make_settings, database_url
):
    engine = create_db_engine(database_url)
    downgrade(engine, "base")
    engine.dispose()
    client = Postroom(make_settings(database_url=database_url), publish=lambda *_: None)
    calls = _calls(client)
    batch = [{"to": "a@example.com", "subject": "Hi", "text": "x"}]
    calls["send_batch"] = lambda: client.send_batch(batch)
    try:
        for name, call in calls.items():
            with pytest.raises(DatabaseNotMigrated) as raised:
                call()
            assert "run `postroom migrate`" in str(raised.value), name
            assert "postroom_" in str(raised.value), name  # the driver's words name the table
    finally:
        client.close()


def test_a_batch_cut_off_by_an_outage_says_where_to_resume_and_the_resume_stores_each_once(
    make_settings, postgres_database_url
):
    client = Postroom(make_settings(database_url=postgres_database_url), publish=lambda *_: None)
    items = [
        {"to": f"user{n}@example.com", "subject": "Hi", "text": "x", "idempotency_key": f"k{n}"}
        for n in range(7)
    ]
    database = postgres_database_url.rpartition("/")[2]
    admin = postgres_admin()

    def cut_after_first_chunk() -> Iterator[dict[str, Any]]:
        for number, item in enumerate(items):
            if number == 3:  # the first chunk is committed: the outage starts
                admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (database,),
                )
            yield item

    try:
        with pytest.raises(BatchInterrupted) as raised:
            client.send_batch(cut_after_first_chunk(), chunk_size=3)
        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        resumed = client.send_batch(items[raised.value.index :], chunk_size=3)
        with client.sessions() as session:
            stored = session.scalar(select(func.count()).select_from(Message))
    finally:
        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        admin.close()
        client.close()

    assert raised.value.index == 3
    assert raised.value.result.created == 3
    assert raised.value.result.ids is None  # a generator: ids are not kept
    assert resumed.created == 4 and resumed.duplicates == 0
    assert stored == 7


def test_other_database_errors_pass_through_unchanged():
    # a constraint violation is a bug in the statement, not a database that is down
    original = IntegrityError("INSERT ...", {}, Exception("duplicate key"))
    with pytest.raises(IntegrityError) as raised, database_errors():
        raise original
    assert raised.value is original


def test_send_in_a_callers_session_leaves_its_database_errors_to_the_caller(
    make_settings, database_url
):
    client = Postroom(make_settings(database_url=database_url), publish=lambda *_: None)
    engine = create_db_engine(database_url)
    downgrade(engine, "base")
    engine.dispose()
    try:
        with client.sessions() as session, pytest.raises(DBAPIError):
            client.send("a@example.com", "Hi", text="x", session=session)
            session.flush()
    finally:
        client.close()
