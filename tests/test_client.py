from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from postroom.client import Postroom
from postroom.db import create_db_engine
from postroom.errors import DatabaseUnavailable, InvalidAddress
from postroom.messages import Message, MessageStatus
from tests.servers import free_port


def test_send_with_a_session_publishes_only_when_the_caller_commits(client, published):
    with client.sessions() as session:
        message = client.send("a@example.com", "Hi", text="x", session=session)
        assert published == []
        session.commit()
    assert published == [("transactional", [message.id])]
    assert client.get_message(message.id).status == MessageStatus.QUEUED


def test_send_with_a_session_that_rolls_back_stores_and_publishes_nothing(client, published):
    with client.sessions() as session:
        client.send("a@example.com", "Hi", text="x", session=session)
        session.rollback()
        # the same session keeps working for the caller after the rollback
        kept = client.send("b@example.com", "Kept", text="x", session=session)
        session.commit()
    assert published.ids == [kept.id]
    with client.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1


def test_a_broker_outage_does_not_fail_send_and_the_sweep_publishes_later(settings):
    calls: list[list[str]] = []

    def broken(stream: str, ids: list[str]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    client = Postroom(settings, publish=broken)
    message = client.send("a@example.com", "Hi", text="x")
    assert client.get_message(message.id).status == MessageStatus.QUEUED
    from datetime import timedelta

    from postroom.db import utcnow

    client.clock = lambda: utcnow() + timedelta(seconds=settings.redispatch_after_seconds + 1)
    assert client.dispatch_due() == 1
    assert calls == [[message.id], [message.id]]
    client.close()


def test_asend_stores_and_publishes_like_send(client, published):
    message = asyncio.run(client.asend("a@example.com", "Hi", text="x"))
    assert client.get_message(message.id).subject == "Hi"
    assert published.ids == [message.id]
    with pytest.raises(InvalidAddress):
        asyncio.run(client.asend("nope", "Hi", text="x"))


def test_the_module_level_functions_use_the_configured_client(make_settings, sqlite_url, caplog):
    import postroom

    # nothing listens on the broker port: send() still succeeds, the row waits for the sweep
    broker = f"redis://127.0.0.1:{free_port()}/0"
    configured = postroom.configure(make_settings(database_url=sqlite_url, broker_url=broker))
    try:
        message = postroom.send("a@example.com", "Hi", text="x")
        assert configured.flush_publications()
        assert "the sweep will retry" in caplog.text
        assert postroom.get_message(message.id).status == MessageStatus.QUEUED
        assert postroom.cancel(message.id).status == MessageStatus.CANCELLED
        assert postroom.default_client() is configured
    finally:
        configured.close()
        postroom._default_client = None


def test_a_send_on_a_connection_the_server_dropped_fails_cleanly_and_the_next_one_works(
    make_settings, postgres_database_url
):
    client = Postroom(make_settings(database_url=postgres_database_url), publish=lambda *_: None)
    first = client.send("a@example.com", "Hi", text="x")
    engine = create_db_engine(postgres_database_url)
    try:
        with engine.begin() as connection:
            # the pooled connection send() used, used again within a second: no ping first
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        with pytest.raises(DatabaseUnavailable) as raised:
            client.send("b@example.com", "Hi", text="x")
        cause = raised.value.__cause__
        assert isinstance(cause, OperationalError) and cause.connection_invalidated
        for text_shown in (str(raised.value), str(cause)):
            assert "b@example.com" not in text_shown  # parameters are never shown
        second = client.send("c@example.com", "Hi", text="x")
        assert {m.id for m in client.list_messages()} == {first.id, second.id}
    finally:
        engine.dispose()
        client.close()
