from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

import postroom
from postroom.attachments import Attachment
from postroom.batches import BatchItemRejected, BatchResult
from postroom.client import Postroom
from postroom.db import utcnow
from postroom.errors import InvalidAddress, MessageRejected, TemplateError
from postroom.events import MessageEvent
from postroom.messages import Message, MessageStatus


def item(number, **fields):
    return {"to": f"user{number}@example.com", "subject": f"Hi {number}", "text": "x", **fields}


def stored_count(client):
    with client.sessions() as session:
        return session.scalar(select(func.count()).select_from(Message))


def events_of(client, ids):
    with client.sessions() as session:
        query = select(MessageEvent.message_id, MessageEvent.status)
        return sorted(session.execute(query.where(MessageEvent.message_id.in_(ids))).all())


def test_send_batch_stores_every_message_with_its_first_event_and_publishes_the_ids(
    client, published
):
    result = client.send_batch([item(n) for n in range(3)])
    assert (result.created, result.duplicates) == (3, 0)
    assert published == [("bulk", result.ids)]
    stored = [client.get_message(message_id) for message_id in result.ids]
    assert [m.to for m in stored] == [[f"user{n}@example.com"] for n in range(3)]
    assert {(m.stream, m.status) for m in stored} == {("bulk", MessageStatus.QUEUED)}
    assert events_of(client, result.ids) == sorted((i, "queued") for i in result.ids)


def test_send_batch_validates_each_item_like_send(client):
    result = client.send_batch(
        [item(0, html="<p>Hello <b>Ann</b></p>", text=None, from_="Shop <shop@example.com>")],
        stream="transactional",
    )
    message = client.get_message(result.ids[0])
    assert message.text == "Hello Ann"  # derived from the HTML, as send() does
    assert (message.from_addr, message.stream) == ("Shop <shop@example.com>", "transactional")


def test_each_chunk_is_committed_before_its_ids_are_published(settings):
    visible: list[int] = []

    def publish(stream, ids):
        # a fresh session sees the rows: they were committed before the publication
        with client.sessions() as session:
            query = select(func.count()).select_from(Message).where(Message.id.in_(ids))
            visible.append(session.scalar(query))

    client = Postroom(settings, publish=publish)
    try:
        result = client.send_batch((item(n) for n in range(7)), chunk_size=3)
    finally:
        client.close()
    assert visible == [3, 3, 1]
    assert (result.created, result.duplicates, result.ids) == (7, 0, None)


def test_a_generator_is_read_one_chunk_ahead_of_what_is_stored_at_most(client, published):
    read = []

    def items():
        for number in range(10):
            # everything read before this item's chunk is already committed and published
            assert len(published.ids) >= len(read) - len(read) % 4
            read.append(number)
            yield item(number)

    result = client.send_batch(items(), chunk_size=4, keep_ids=True)
    assert [len(ids) for _, ids in published] == [4, 4, 2]
    assert result.ids == published.ids
    assert stored_count(client) == 10


def test_idempotency_keys_deduplicate_within_a_batch_across_chunks_and_across_batches(
    client, published
):
    earlier = client.send("a@example.com", "Before", text="x", idempotency_key="k-old")
    items = [
        item(0, idempotency_key="k-a"),
        item(1, idempotency_key="k-a"),  # same chunk
        item(2, idempotency_key="k-b"),
        item(3, idempotency_key="k-a"),  # a later chunk
        item(4, idempotency_key="k-old"),  # stored by send()
        item(5),
    ]
    first = client.send_batch(items, chunk_size=3)
    assert (first.created, first.duplicates) == (3, 3)
    assert first.ids is not None
    assert first.ids[1] == first.ids[3] == first.ids[0]
    assert first.ids[4] == earlier.id
    assert len(set(first.ids)) == 4
    published.clear()

    again = client.send_batch(items[:5])
    assert (again.created, again.duplicates) == (0, 5)
    assert again.ids == first.ids[:5]
    assert published == []
    assert stored_count(client) == 4
    assert len(events_of(client, set(first.ids))) == 4


def test_an_invalid_item_keeps_the_items_before_it_and_stores_nothing_from_it_on(client, published):
    read = []

    def items():
        for number in range(8):
            read.append(number)
            yield item(number, to="not-an-address" if number == 4 else f"u{number}@example.com")

    with pytest.raises(BatchItemRejected) as caught:
        client.send_batch(items(), chunk_size=3)
    error = caught.value
    assert isinstance(error, MessageRejected) and isinstance(error, ValueError)
    assert (error.index, error.field) == (4, "messages[4].to[0]")
    assert str(error).startswith("messages[4].to[0]: ")
    assert isinstance(error.error, InvalidAddress)
    assert error.result == BatchResult(created=4, duplicates=0, ids=None)
    assert error.result.accepted == 4
    # items 0-2 (a whole chunk) and 3 (before the rejected one in its chunk) are committed
    # and published; 5 was read with its chunk but not stored, 6 and 7 were never read
    assert stored_count(client) == 4
    assert len(published.ids) == 4
    assert read == [0, 1, 2, 3, 4, 5]


def test_items_are_mappings_of_send_fields_without_the_batch_wide_ones(client):
    with pytest.raises(BatchItemRejected, match=r"messages\[1\]\.stream: give it once"):
        client.send_batch([item(0), item(1, stream="transactional")])
    with pytest.raises(BatchItemRejected, match=r"messages\[0\]\.colour: not a field"):
        client.send_batch([item(0, colour="red")])
    with pytest.raises(BatchItemRejected, match=r"messages\[0\]: each message is a mapping"):
        client.send_batch(["a@example.com"])
    with pytest.raises(MessageRejected, match="stream: unknown stream 'loud'"):
        client.send_batch([item(0)], stream="loud")
    with pytest.raises(ValueError, match="chunk_size"):
        client.send_batch([item(0)], chunk_size=0)
    assert stored_count(client) == 1  # item 0 of the first call


def test_with_a_session_the_batch_is_published_only_when_the_caller_commits(client, published):
    with client.sessions() as session:
        result = client.send_batch([item(n) for n in range(5)], session=session, chunk_size=2)
        assert published == []
        assert stored_count(client) == 0  # not committed yet
        session.commit()
    assert published.ids == result.ids
    assert stored_count(client) == 5


def test_with_a_session_that_rolls_back_nothing_is_stored_or_published(client, published):
    with client.sessions() as session:
        with pytest.raises(BatchItemRejected):
            client.send_batch([item(0), item(1), item(2, to="bad")], session=session)
        session.rollback()
        kept = client.send_batch([item(3)], session=session)
        session.commit()
    assert published.ids == kept.ids
    assert stored_count(client) == 1


def test_templates_are_rendered_per_item(client):
    client.save_template("welcome", subject="Welcome, {{ name }}", html="<p>Hi {{ name }}</p>")
    result = client.send_batch(
        [
            {"to": f"{name.lower()}@example.com", "template": "welcome", "context": {"name": name}}
            for name in ("Ann", "Bob")
        ]
    )
    subjects = [client.get_message(i).subject for i in result.ids]
    assert subjects == ["Welcome, Ann", "Welcome, Bob"]
    message = client.get_message(result.ids[0])
    assert (message.template_name, message.template_version) == ("welcome", 1)
    with pytest.raises(BatchItemRejected) as caught:
        client.send_batch([{"to": "a@example.com", "template": "missing"}])
    assert isinstance(caught.value.error, TemplateError)
    assert caught.value.field == "messages[0].template"


def test_scheduled_items_are_stored_but_not_published(client, published):
    later = utcnow() + timedelta(hours=1)
    result = client.send_batch([item(0), item(1, send_at=later)])
    assert published.ids == [result.ids[0]]
    assert client.get_message(result.ids[1]).status == MessageStatus.SCHEDULED
    assert events_of(client, result.ids[1:]) == [(result.ids[1], "scheduled")]


def test_attachments_are_stored_with_their_message(client):
    pdf = Attachment("ticket.pdf", b"%PDF-1.4 ticket")
    result = client.send_batch([item(0, attachments=[pdf]), item(1)])
    first, second = (client.get_message(i) for i in result.ids)
    assert (first.attachment_count, second.attachment_count) == (1, 0)
    assert [a.filename for a in client.list_attachments(first.id)] == ["ticket.pdf"]


def test_asend_batch_stores_and_publishes_like_send_batch(client, published):
    result = asyncio.run(client.asend_batch([item(0), item(1)]))
    assert published.ids == result.ids
    assert result.created == 2


def test_the_module_level_send_batch_uses_the_default_client():
    assert postroom.send_batch.__wrapped__ is Postroom.send_batch
    assert postroom.asend_batch.__wrapped__ is Postroom.asend_batch
