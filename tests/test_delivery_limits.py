from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from postroom.client import Postroom
from postroom.events import MessageEvent
from postroom.messages import MessageStatus
from postroom.transports.memory import MemoryTransport

DAY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.fixture
def limited(make_settings, database_url, redis_server, outbox):
    def make(**limits) -> Postroom:
        settings = make_settings(
            database_url=database_url,
            limits_redis_url=redis_server.url,
            limits={"default": limits},
        )
        client = Postroom(settings, publish=lambda s, i: None)
        clients.append(client)
        return client

    clients: list[Postroom] = []
    yield make
    for client in clients:
        client.close()


def drain(client: Postroom) -> None:
    while client.deliver([], stream="transactional").claimed:
        pass


def test_a_daily_quota_sends_exactly_the_quota_and_defers_the_rest_to_the_next_day(limited, outbox):
    client = limited(daily_quota=500, timezone="Europe/Paris")
    client.clock = lambda: DAY
    ids = [client.send(f"u{i}@example.com", f"m{i}", text="x").id for i in range(600)]
    drain(client)
    messages = [client.get_message(i) for i in ids]
    by_status = {s: [m for m in messages if m.status == s] for s in ("sent", "deferred", "failed")}
    assert [len(by_status[s]) for s in ("sent", "deferred", "failed")] == [500, 100, 0]
    assert len(outbox) == 500
    midnight_paris = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)
    assert {m.next_attempt_at for m in by_status["deferred"]} == {midnight_paris}
    assert {m.attempts for m in by_status["deferred"]} == {0}  # held back, never tried
    assert all("daily quota 500" in (m.last_error or "") for m in by_status["deferred"])
    # the next day the rest goes out
    client.clock = lambda: midnight_paris + timedelta(seconds=1)
    drain(client)
    assert len(outbox) == 600
    assert {client.get_message(i).status for i in ids} == {MessageStatus.SENT}


def test_a_rate_limit_spreads_deferrals_one_interval_apart(limited, outbox):
    client = limited(rate_per_second=10)
    client.clock = lambda: DAY
    ids = [client.send(f"u{i}@example.com", f"m{i}", text="x").id for i in range(20)]
    report = client.deliver(ids)
    assert (report.sent, report.deferred) == (1, 19)  # a burst of one, then 10/s
    deferred = sorted(
        m.next_attempt_at for m in map(client.get_message, ids) if m.status == "deferred"
    )
    gaps = {b - a for a, b in itertools.pairwise(deferred)}
    assert gaps == {timedelta(milliseconds=100)}
    with client.sessions() as session:
        details = session.scalars(
            select(MessageEvent.detail).where(MessageEvent.status == "deferred")
        ).all()
    assert set(details) == {"rate limit 10/s"}


def test_an_explicit_transport_must_exist(make_settings, sqlite_url):
    from postroom.errors import UnknownTransport

    client = Postroom(
        make_settings(database_url=sqlite_url, transports={"backup": "memory://backup"}),
        publish=lambda s, i: None,
    )
    assert (
        client.send("a@example.com", "Hi", text="x", transport="backup").requested_transport
        == "backup"
    )
    with pytest.raises(UnknownTransport) as raised:
        client.send("a@example.com", "Hi", text="x", transport="nope")
    assert raised.value.field == "transport"
    client.close()


def test_when_the_limits_store_is_down_messages_wait_and_keep_their_attempts(
    make_settings, sqlite_url, outbox
):
    from tests.servers import free_port

    settings = make_settings(
        database_url=sqlite_url,
        limits_redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        limits={"default": {"rate_per_second": 5}},
    )
    client = Postroom(settings, publish=lambda s, i: None)
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(3)]
    report = client.deliver(ids)
    assert (report.sent, report.deferred, report.failed) == (0, 3, 0)
    held = [client.get_message(i) for i in ids]
    assert {m.attempts for m in held} == {0}
    assert all("limits unavailable" in (m.last_error or "") for m in held)
    assert outbox == []  # never sent past a limit it could not check
    client.close()


def test_tokens_are_taken_once_the_connection_is_open(limited, outbox, monkeypatch):
    # Opening a connection takes half a second here (a distant provider's TCP, TLS and login).
    # Tokens taken before it would have refilled meanwhile, letting two messages out at once.
    now = [DAY]
    opened: list[datetime] = []

    def connect(transport: MemoryTransport) -> bool:
        if opened:
            return False
        now[0] += timedelta(seconds=0.5)
        opened.append(now[0])
        return True

    monkeypatch.setattr(MemoryTransport, "connect", connect, raising=False)
    client = limited(rate_per_second=10)
    client.clock = lambda: now[0]
    ids = [client.send(f"u{i}@example.com", f"m{i}", text="x").id for i in range(3)]

    report = client.deliver(ids)

    assert opened == [DAY + timedelta(seconds=0.5)]
    assert (report.sent, report.deferred) == (1, 2)  # a burst of one after the connection
    deferred = sorted(
        m.next_attempt_at for m in map(client.get_message, ids) if m.status == "deferred"
    )
    assert deferred == [opened[0] + timedelta(milliseconds=100 * n) for n in (1, 2)]
    assert len(outbox) == 1
