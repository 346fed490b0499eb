"""Nothing accepted is lost: not when a worker is SIGKILLed mid-batch, not when Redis is flushed."""

from __future__ import annotations

from collections import Counter

import pytest

from postroom.client import Postroom
from postroom.tasks import DELIVER_TASK, TRANSACTIONAL_QUEUE
from tests.integration.conftest import MakeProducer, MakeSettings, StartWorker
from tests.integration.support import (
    event_trails,
    queued_ids,
    send_many,
    statuses,
    wait_until_final,
)
from tests.servers import RedisServer, SmtpSink

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_batch_loses_nothing(
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(
        postgres_database_url,
        batch_size=10,
        # longer than a slow batch takes (10 x 0.1 s), so no living worker is ever raced
        lease_seconds=4.0,
        recover_interval_seconds=0.5,
        redispatch_after_seconds=2.0,
    )
    store_only = Postroom(settings, publish=lambda stream, ids: None)
    try:
        sent = send_many(store_only, 60)
    finally:
        store_only.close()
    ids = list(sent.values())
    producer = make_producer(settings)
    smtp_sink.delay_seconds = 0.1
    first = worker(settings)

    # the batches the dispatch sweep would publish: each task claims ten messages at once
    for start in range(0, len(ids), settings.batch_size):
        batch = ids[start : start + settings.batch_size]
        producer.celery.send_task(DELIVER_TASK, args=[batch], queue=TRANSACTIONAL_QUEUE)
    smtp_sink.wait_for(15, timeout=30)
    first.kill()

    # claimed by the dead worker, and possibly handed to the SMTP server, but not recorded
    in_flight = {i for i, status in statuses(producer, ids).items() if status == "sending"}
    assert in_flight, "the worker was killed between batches; nothing was in flight"
    smtp_sink.delay_seconds = 0.0
    worker(settings, beat=True)

    wait_until_final(producer, ids, timeout=60)
    assert set(statuses(producer, ids).values()) == {"sent"}
    received = smtp_sink.message_ids()
    assert set(received) == set(sent)
    # Invariant 2's one allowed duplicate: a message the dead worker had in flight.
    duplicated = {sent[header] for header, count in received.items() if count > 1}
    assert duplicated <= in_flight
    assert max(received.values()) <= 2
    # every other message, including those of the dead worker's unacknowledged tasks, once
    assert {sent[h] for h, count in received.items() if count == 1} >= set(ids) - in_flight
    trails = event_trails(producer, ids)
    for message_id in in_flight:
        # the recovery sweep retook it after its lease, then a task of the new worker sent it
        assert [status for status, _ in trails[message_id]] == [
            "queued",
            "sending",
            "deferred",
            "sending",
            "sent",
        ]


@pytest.mark.timeout(90)
def test_a_flushed_broker_loses_nothing(
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    redis_server: RedisServer,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(postgres_database_url, redispatch_after_seconds=1.0)
    producer = make_producer(settings)
    sent = send_many(producer, 100)
    assert producer.flush_publications()
    # ids sent together may share a task: what counts is that every id is in the broker
    assert sorted(queued_ids(redis_server)) == sorted(sent.values())
    redis = redis_server.client()
    try:
        redis.flushall()
        assert redis.dbsize() == 0
    finally:
        redis.close()

    worker(settings, beat=True)

    wait_until_final(producer, sent.values(), timeout=60)
    assert smtp_sink.message_ids() == Counter(dict.fromkeys(sent, 1))
    assert set(statuses(producer, sent.values()).values()) == {"sent"}
    trails = event_trails(producer, sent.values())
    assert {tuple(status for status, _ in trail) for trail in trails.values()} == {
        ("queued", "sending", "sent")
    }


@pytest.mark.timeout(90)
def test_a_broker_flushed_under_a_running_worker_loses_nothing(
    postgres_database_url: str,
    make_integration_settings: MakeSettings,
    make_producer: MakeProducer,
    worker: StartWorker,
    redis_server: RedisServer,
    smtp_sink: SmtpSink,
) -> None:
    settings = make_integration_settings(postgres_database_url, redispatch_after_seconds=1.0)
    worker(settings, beat=True)
    producer = make_producer(settings)
    before = send_many(producer, 5)
    wait_until_final(producer, before.values(), timeout=30)
    redis = redis_server.client()
    try:
        redis.flushall()
    finally:
        redis.close()

    # the producer and the worker keep their connections, and what they declared is gone
    after = send_many(producer, 50)

    wait_until_final(producer, after.values(), timeout=60)
    assert smtp_sink.message_ids() == Counter(dict.fromkeys([*before, *after], 1))
