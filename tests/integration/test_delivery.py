"""The delivery path end to end: producer → Redis → prefork worker → SMTP server, counted there."""

from __future__ import annotations

from collections import Counter

import pytest

from postroom.client import Postroom
from postroom.errors import MessageNotFound
from postroom.tasks import DELIVER_TASK, TRANSACTIONAL_QUEUE
from tests.integration.conftest import MakeProducer, MakeSettings, StartWorker
from tests.integration.support import (
    event_trails,
    queued_tasks,
    send_many,
    statuses,
    wait_until_broker_idle,
    wait_until_final,
)
from tests.servers import RedisServer, SmtpSink

pytestmark = pytest.mark.integration


@pytest.mark.timeout(150)
def test_every_message_is_delivered_exactly_once(
    database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(database_url)
    # with beat: the dispatch and recovery sweeps run while the 500 are delivered
    worker(settings, beat=True)
    producer = make_producer(settings)

    sent = send_many(producer, 500)

    smtp_sink.wait_for(500, timeout=90)
    wait_until_final(producer, sent.values())
    assert smtp_sink.message_ids() == Counter(dict.fromkeys(sent, 1))
    assert set(statuses(producer, sent.values()).values()) == {"sent"}
    trails = event_trails(producer, sent.values())
    assert {tuple(trail) for trail in trails.values()} == {
        (("queued", None), ("sending", None), ("sent", 250))
    }


@pytest.mark.timeout(90)
def test_a_task_published_three_times_sends_each_message_once(
    database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    redis_server: RedisServer,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(database_url)
    # messages stored without publishing, so the three copies below are their only tasks
    store_only = Postroom(settings, publish=lambda stream, ids: None)
    try:
        sent = send_many(store_only, 60)
    finally:
        store_only.close()
    producer = make_producer(settings)
    worker(settings)

    ids = list(sent.values())
    for _ in range(3):
        producer.celery.send_task(DELIVER_TASK, args=[ids], queue=TRANSACTIONAL_QUEUE)

    wait_until_final(producer, ids)
    # every copy has run to its end, not just the one that claimed the messages
    wait_until_broker_idle(redis_server)
    assert smtp_sink.message_ids() == Counter(dict.fromkeys(sent, 1))
    trails = event_trails(producer, ids)
    assert {tuple(status for status, _ in trail) for trail in trails.values()} == {
        ("queued", "sending", "sent")
    }


@pytest.mark.parametrize(
    ("reply", "stage"),
    [("421 4.3.2 Service shutting down", "RCPT"), ("451 4.3.0 Busy, try later", "DATA")],
)
def test_a_temporary_refusal_defers_the_message_then_sends_it(
    reply: str,
    stage: str,
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(postgres_database_url)
    worker(settings, beat=True)
    producer = make_producer(settings)
    smtp_sink.refuse(reply, stage=stage, times=1)

    message = producer.send("later@example.com", "Retried", text="second time lucky")

    wait_until_final(producer, [message.id], timeout=30)
    code = int(reply[:3])
    assert event_trails(producer, [message.id])[message.id] == [
        ("queued", None),
        ("sending", None),
        ("deferred", code),
        ("sending", None),
        ("sent", 250),
    ]
    stored = producer.get_message(message.id)
    assert (stored.status, stored.attempts) == ("sent", 2)
    assert smtp_sink.message_ids() == Counter({message.message_id_header: 1})


def test_a_permanent_refusal_fails_the_message_after_one_attempt(
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(postgres_database_url)
    worker(settings, beat=True)
    producer = make_producer(settings)
    smtp_sink.refuse("550 5.1.1 No such user", stage="RCPT", times=1)

    refused = producer.send("nobody@example.com", "Bounced", text="never arrives")
    wait_until_final(producer, [refused.id], timeout=30)
    # the next message goes through the same worker and the same sweeps
    control = producer.send("somebody@example.com", "Delivered", text="arrives")
    wait_until_final(producer, [control.id], timeout=30)

    stored = producer.get_message(refused.id)
    assert (stored.status, stored.attempts) == ("failed", 1)
    assert "550 5.1.1 No such user" in (stored.last_error or "")
    assert event_trails(producer, [refused.id])[refused.id] == [
        ("queued", None),
        ("sending", None),
        ("failed", 550),
    ]
    assert smtp_sink.message_ids() == Counter({control.message_id_header: 1})


def test_send_in_a_rolled_back_session_publishes_and_sends_nothing(
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    redis_server: RedisServer,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(postgres_database_url)
    producer = make_producer(settings)

    with producer.sessions() as session:
        rolled_back = producer.send("a@example.com", "Rolled back", text="x", session=session)
        rolled_back_id, rolled_back_header = rolled_back.id, rolled_back.message_id_header
        session.rollback()
    producer.flush_publications()
    assert queued_tasks(redis_server) == 0
    with pytest.raises(MessageNotFound):
        producer.get_message(rolled_back_id)

    with producer.sessions() as session:
        committed = producer.send("b@example.com", "Committed", text="y", session=session)
        # joined the caller's transaction: nothing is published before its commit
        assert queued_tasks(redis_server) == 0
        session.commit()
    assert producer.flush_publications()
    assert queued_tasks(redis_server) == 1

    worker(settings, beat=True)
    wait_until_final(producer, [committed.id], timeout=30)
    assert smtp_sink.message_ids() == Counter({committed.message_id_header: 1})
    assert rolled_back_header not in smtp_sink.message_ids()
