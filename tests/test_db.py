from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from postroom import db
from postroom.db import create_db_engine, id_created_at, new_id, normalize_database_url
from postroom.messages import Message


def test_ids_made_in_the_same_millisecond_still_increase():
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_are_unique_and_sort_by_creation_time():
    first = new_id()
    time.sleep(0.002)
    later = [new_id() for _ in range(1000)]
    assert len(set(later)) == 1000
    assert all(first < other for other in later)
    assert abs(id_created_at(first) - datetime.now(UTC)) < timedelta(seconds=5)


def test_datetimes_round_trip_as_aware_utc_and_compare_correctly(client):
    message = client.send("a@example.com", "Hi", text="x")
    plus_two = timezone(timedelta(hours=2))
    local = datetime.now(plus_two) + timedelta(minutes=5)
    with client.sessions.begin() as session:
        session.get(Message, message.id).next_attempt_at = local
    with client.sessions() as session:
        stored = session.get(Message, message.id).next_attempt_at
        assert stored == local and stored.tzinfo == UTC
        # the comparison happens in the database: offsets must not confuse it
        due = session.scalars(select(Message.id).where(Message.next_attempt_at <= local)).all()
        assert due == [message.id]


def test_naive_datetimes_are_refused(client):
    message = client.send("a@example.com", "Hi", text="x")
    with pytest.raises(Exception, match="naive"), client.sessions.begin() as session:
        session.get(Message, message.id).next_attempt_at = datetime(2030, 1, 1)
        session.flush()


def test_plain_postgresql_urls_use_psycopg_3():
    assert normalize_database_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_sqlite_runs_in_wal_mode(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def _backend_pid(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_an_idle_pooled_connection_whose_server_side_died_is_replaced(
    postgres_database_url, monkeypatch
):
    engine = create_db_engine(postgres_database_url)
    killer = create_db_engine(postgres_database_url)
    try:
        first = _backend_pid(engine)
        with killer.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        # the pooled connection is now idle "long enough": it is pinged, found dead, replaced
        monkeypatch.setattr(db, "POOL_PING_AFTER_IDLE_SECONDS", 0.0)
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()
        killer.dispose()


def test_a_recently_used_pooled_connection_is_not_pinged(postgres_database_url, monkeypatch):
    engine = create_db_engine(postgres_database_url)
    pings: list[object] = []
    monkeypatch.setattr(engine.dialect, "do_ping", pings.append)
    try:
        assert _backend_pid(engine) == _backend_pid(engine)
        assert pings == []
        monkeypatch.setattr(db, "POOL_PING_AFTER_IDLE_SECONDS", 0.0)
        _backend_pid(engine)
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_a_failed_statement_s_error_never_shows_its_parameters(database_url, make_settings):
    from sqlalchemy.exc import DBAPIError

    from postroom.client import Postroom

    client = Postroom(make_settings(database_url=database_url), publish=lambda *_: None)
    secret = "https://example.com/reset?token=8f14e45fceea167a5a36dedd4bea2543"
    with client.sessions() as session:
        # a write refused by the database, with the message's body among its parameters
        if database_url.startswith("postgresql"):
            session.execute(text("SET TRANSACTION READ ONLY"))
        else:
            session.execute(text("PRAGMA query_only = ON"))
        with pytest.raises(DBAPIError) as caught:
            client.send("ada@example.com", "Reset", text=f"Reset: {secret}", session=session)
        session.rollback()
        if database_url.startswith("sqlite"):
            session.execute(text("PRAGMA query_only = OFF"))
    client.close()
    assert "INSERT INTO postroom_messages" in str(caught.value)
    assert secret not in str(caught.value)
    assert "ada@example.com" not in str(caught.value)
