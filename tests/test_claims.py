from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event

from postroom import claims
from postroom.db import utcnow
from postroom.messages import ClaimedMessage, MessageStatus

LEASE = timedelta(seconds=30)


def test_a_second_claim_of_the_same_ids_claims_nothing(client):
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(3)]
    now = utcnow()
    with client.sessions.begin() as session:
        first = claims.claim_due(session, ids, lease=LEASE, now=now)
    with client.sessions.begin() as session:
        second = claims.claim_due(session, ids, lease=LEASE, now=now)
    assert sorted(m.id for m in first) == sorted(ids)
    assert second == []
    message = client.get_message(ids[0])
    assert message.status == MessageStatus.SENDING
    assert message.attempts == 1
    assert message.lease_until == now + LEASE


def test_a_claim_returns_every_column_delivery_reads_as_stored(client):
    # with and without the stream top-up: the two statements return their columns apart
    wanted = client.send(
        "Ann <a@example.com>",
        "Grüße",
        text="x",
        html="<p>x</p>",
        cc=["c@example.com"],
        bcc=["b@example.com"],
        reply_to=["r@example.com"],
        headers={"X-Campaign": "spring"},
        transport="default",
    )
    topped_up = client.send("d@example.com", "m", text="y")
    with client.sessions.begin() as session:
        alone = claims.claim_due(session, [wanted.id], lease=LEASE, now=utcnow())
    with client.sessions.begin() as session:
        filled = claims.claim_due(
            session, [], lease=LEASE, now=utcnow(), stream="transactional", limit=5
        )
    assert alone == [ClaimedMessage.of(client.get_message(wanted.id))]
    assert filled == [ClaimedMessage.of(client.get_message(topped_up.id))]
    assert alone[0].cc == ["c@example.com"] and alone[0].headers == {"X-Campaign": "spring"}
    assert alone[0].attempts == 1 and alone[0].requested_transport == "default"


def test_messages_not_yet_due_are_not_claimed(client):
    message = client.send("a@example.com", "m", text="x")
    with client.sessions.begin() as session:
        claimed = claims.claim_due(
            session, [message.id], lease=LEASE, now=utcnow() - timedelta(minutes=1)
        )
    assert claimed == []


def test_scheduled_messages_are_promoted_then_dispatched_once(client, published):
    message = client.send("a@example.com", "m", text="x", send_at=utcnow() + timedelta(seconds=5))
    assert client.dispatch_due() == 0
    later = utcnow() + timedelta(seconds=6)
    client.clock = lambda: later
    assert client.dispatch_due() == 1
    assert published.ids == [message.id]
    assert client.get_message(message.id).status == MessageStatus.QUEUED
    # its task is live now: the next sweep leaves it alone until the redispatch interval passes
    assert client.dispatch_due() == 0
    client.clock = lambda: later + timedelta(seconds=client.settings.redispatch_after_seconds + 1)
    assert client.dispatch_due() == 1
    assert published.ids == [message.id, message.id]


def test_queued_messages_whose_task_was_lost_are_redispatched(client, published):
    message = client.send("a@example.com", "m", text="x")
    published.clear()  # as if the broker lost the task
    assert client.dispatch_due() == 0
    client.clock = lambda: (
        utcnow() + timedelta(seconds=client.settings.redispatch_after_seconds + 1)
    )
    assert client.dispatch_due() == 1
    assert published == [("transactional", [message.id])]


def test_dispatch_publishes_in_batches_per_stream(make_settings, database_url, published):
    from postroom.client import Postroom

    client = Postroom(
        make_settings(database_url=database_url, batch_size=2),
        publish=lambda stream, ids: published.append((stream, ids)),
    )
    for i in range(3):
        client.send("a@example.com", f"t{i}", text="x")
    client.send("a@example.com", "b", text="x", stream="bulk")
    published.clear()
    client.clock = lambda: utcnow() + timedelta(hours=1)
    assert client.dispatch_due() == 4
    assert sorted((stream, len(ids)) for stream, ids in published) == [
        ("bulk", 1),
        ("transactional", 1),
        ("transactional", 2),
    ]
    client.close()


def test_expired_leases_are_retaken_as_deferred_and_due(client):
    message = client.send("a@example.com", "m", text="x")
    now = utcnow()
    with client.sessions.begin() as session:
        claims.claim_due(session, [message.id], lease=LEASE, now=now)
    assert client.recover_expired() == 0  # the lease still runs: a living worker is never raced
    client.clock = lambda: now + LEASE + timedelta(seconds=1)
    assert client.recover_expired() == 1
    recovered = client.get_message(message.id)
    assert recovered.status == MessageStatus.DEFERRED
    assert recovered.dispatched_at is None
    assert [e.status for e in client.get_events(message.id)] == ["queued", "sending", "deferred"]


def test_expired_leases_with_no_attempt_left_fail(client):
    message = client.send("a@example.com", "m", text="x")
    now = utcnow()
    for attempt in range(client.settings.retry.max_attempts):
        moment = now + attempt * (LEASE + timedelta(seconds=1))
        with client.sessions.begin() as session:
            assert claims.claim_due(session, [message.id], lease=LEASE, now=moment)
        with client.sessions.begin() as session:
            claims.recover_expired(
                session,
                now=moment + LEASE + timedelta(milliseconds=500),
                max_attempts=client.settings.retry.max_attempts,
            )
    final = client.get_message(message.id)
    assert final.status == MessageStatus.FAILED
    assert final.attempts == client.settings.retry.max_attempts
    assert "lease expired" in (final.last_error or "")


def test_a_claim_with_a_stream_tops_the_batch_up_with_other_due_messages(client):
    transactional = [client.send("a@example.com", f"t{i}", text="x").id for i in range(5)]
    bulk = [client.send("a@example.com", f"b{i}", text="x", stream="bulk").id for i in range(3)]
    now = utcnow()
    with client.sessions.begin() as session:
        claimed = claims.claim_due(
            session, [transactional[-1]], lease=LEASE, now=now, stream="transactional", limit=3
        )
    ids = [m.id for m in claimed]
    # its own id first, then the oldest due of the same stream; never the other stream
    assert set(ids) == {transactional[-1], transactional[0], transactional[1]}
    assert not set(ids) & set(bulk)
    with client.sessions.begin() as session:
        rest = claims.claim_due(session, [], lease=LEASE, now=now, stream="bulk", limit=10)
    assert sorted(m.id for m in rest) == sorted(bulk)


def test_a_backlog_published_one_id_per_task_is_drained_by_the_first_tasks(client, outbox):
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(250)]
    reports = [client.deliver([i], stream="transactional") for i in ids]
    assert [r.claimed for r in reports[:3]] == [100, 100, 50]
    assert all(r.claimed == 0 for r in reports[3:])
    assert len(outbox) == 250


def test_concurrent_claims_on_postgresql_skip_each_others_rows(
    make_settings, postgres_database_url
):
    from postroom.client import Postroom

    client = Postroom(make_settings(database_url=postgres_database_url), publish=lambda s, i: None)
    for i in range(10):
        client.send("a@example.com", f"m{i}", text="x")
    now = utcnow()
    with client.sessions.begin() as first:
        held = claims.claim_due(first, [], lease=LEASE, now=now, stream="transactional", limit=4)
        # the first transaction still holds its rows: the second claims others, without waiting
        with client.sessions.begin() as second:
            other = claims.claim_due(
                second, [], lease=LEASE, now=now, stream="transactional", limit=4
            )
    assert len(held) == len(other) == 4
    assert not {m.id for m in held} & {m.id for m in other}
    client.close()


def _claim_plan(session, ids, *, stream, limit, now):
    """PostgreSQL's plan for the claim of ``ids`` topped up from ``stream``, as text."""
    statement = claims._claim_statement("postgresql", with_ids=True, with_stream=True)
    params = {
        "b_now": now,
        "b_lease_until": now + LEASE,
        "b_limit": limit,
        "b_ids": list(ids),
        "b_stream": stream,
    }
    connection = session.connection()

    def explain(conn, cursor, sql, parameters, context, executemany):
        return f"EXPLAIN {sql}", parameters

    event.listen(connection, "before_cursor_execute", explain, retval=True)
    try:
        return "\n".join(row[0] for row in connection.execute(statement, params))
    finally:
        event.remove(connection, "before_cursor_execute", explain)


def test_the_claim_on_postgresql_reads_only_what_it_claims_before_any_statistics(
    make_settings, postgres_database_url
):
    # A table just filled and never analysed (autovacuum has not come round yet) is where a
    # planner guessing "a handful of due rows" would read the whole backlog once per batch.
    from postroom.client import Postroom

    client = Postroom(make_settings(database_url=postgres_database_url), publish=lambda s, i: None)
    result = client.send_batch(
        ({"to": f"u{i}@example.com", "subject": "s", "text": "x"} for i in range(5000)),
        stream="transactional",
        keep_ids=True,
    )
    requested = result.ids[-80:]
    with client.sessions() as session:  # EXPLAIN alone plans the claim without running it
        plan = _claim_plan(session, requested, stream="transactional", limit=100, now=utcnow())
    client.close()
    parts = _cte_parts(plan)
    # the requested ids: one primary-key lookup each, never a scan of every due row
    assert "Index Scan using postroom_messages_pkey" in parts["wanted"], plan
    assert "Bitmap" not in parts["wanted"] and "Seq Scan" not in parts["wanted"], plan
    # the top-up: the stream's claimable rows in index order, stopping at the limit unsorted
    assert "Index Scan using ix_postroom_messages_claimable" in parts["oldest"], plan
    assert "Sort" not in parts["oldest"] and "Bitmap" not in parts["oldest"], plan


def _cte_parts(plan):
    """The plan's lines under each ``CTE name`` heading, by name."""
    parts: dict[str, str] = {}
    name = ""
    for line in plan.splitlines():
        heading = line.strip()
        if heading.startswith("CTE ") and not heading.startswith("CTE Scan"):
            name = heading.removeprefix("CTE ")
        parts[name] = parts.get(name, "") + line + "\n"
    return parts
