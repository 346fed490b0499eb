from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from postroom.errors import InvalidTransition, MessageNotFound, MessageRejected
from postroom.events import MessageEvent
from postroom.messages import ALLOWED, CANCELLABLE, FINAL, Message, MessageStatus


def count_rows(client, table) -> int:
    with client.sessions() as session:
        return session.scalar(select(func.count()).select_from(table))


def test_send_stores_a_queued_message_with_its_event_and_publishes_its_id(client, published):
    message = client.send("Ann <ann@example.com>", "Welcome", text="hi", tags=["welcome"])
    stored = client.get_message(message.id)
    assert stored.status == MessageStatus.QUEUED
    assert stored.to == ["Ann <ann@example.com>"]
    assert stored.tags == ["welcome"]
    assert stored.message_id_header == f"<{message.id}@example.com>"
    assert [e.status for e in client.get_events(message.id)] == ["queued"]
    assert published == [("transactional", [message.id])]


def test_the_same_idempotency_key_returns_the_first_message_and_stores_nothing_more(
    client, published
):
    first = client.send("a@example.com", "One", text="x", idempotency_key="order-42")
    second = client.send("b@example.com", "Two", text="y", idempotency_key="order-42")
    assert second.id == first.id
    assert second.subject == "One"
    assert count_rows(client, Message) == 1
    assert published.ids == [first.id]


def test_a_future_send_at_schedules_without_publishing(client, published):
    when = datetime.now(UTC) + timedelta(hours=1)
    message = client.send("a@example.com", "Later", text="x", send_at=when)
    assert message.status == MessageStatus.SCHEDULED
    assert message.next_attempt_at == when
    assert published == []


def test_bulk_stream_is_published_on_its_own_stream(client, published):
    message = client.send("a@example.com", "News", text="x", stream="bulk")
    assert published == [("bulk", [message.id])]


def test_rejected_input_stores_nothing(client, published):
    with pytest.raises(MessageRejected):
        client.send("a@example.com", "Hi\nthere", text="x")
    assert count_rows(client, Message) == 0
    assert count_rows(client, MessageEvent) == 0
    assert published == []


def test_cancel_a_queued_message_records_the_event(client):
    message = client.send("a@example.com", "Hi", text="x")
    cancelled = client.cancel(message.id)
    assert cancelled.status == MessageStatus.CANCELLED
    assert [e.status for e in client.get_events(message.id)] == ["queued", "cancelled"]
    # a cancelled message is no longer claimable
    assert client.deliver([message.id]).claimed == 0


def test_cancel_a_sent_message_is_an_invalid_transition(client, outbox):
    message = client.send("a@example.com", "Hi", text="x")
    client.deliver([message.id])
    with pytest.raises(InvalidTransition) as raised:
        client.cancel(message.id)
    assert raised.value.current == "sent"
    assert client.get_message(message.id).status == MessageStatus.SENT


def test_unknown_ids_raise_message_not_found(client):
    with pytest.raises(MessageNotFound):
        client.get_message("0" * 26)
    with pytest.raises(MessageNotFound):
        client.cancel("0" * 26)


def test_listing_pages_newest_first_and_filters_by_status(client):
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(5)]
    client.cancel(ids[0])
    first_page = client.list_messages(limit=3)
    assert [m.id for m in first_page] == ids[::-1][:3]
    second_page = client.list_messages(limit=3, before=first_page[-1].id)
    assert [m.id for m in second_page] == ids[::-1][3:]
    assert [m.id for m in client.list_messages(status=MessageStatus.CANCELLED)] == [ids[0]]


def test_the_transition_table_is_closed_over_statuses():
    assert set(ALLOWED) == set(MessageStatus)
    for status in FINAL:
        assert ALLOWED[status] == frozenset()
    for status in CANCELLABLE:
        assert MessageStatus.CANCELLED in ALLOWED[status]
