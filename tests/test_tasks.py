from __future__ import annotations

from postroom.client import Postroom
from postroom.tasks import (
    BULK_QUEUE,
    DELIVER_TASK,
    DISPATCH_DUE_TASK,
    MAINTENANCE_QUEUE,
    QUEUES,
    RECOVER_EXPIRED_TASK,
    TRANSACTIONAL_QUEUE,
    queue_for,
)


def test_streams_map_to_their_queues_and_transactional_is_drained_first():
    assert queue_for("transactional") == TRANSACTIONAL_QUEUE
    assert queue_for("bulk") == BULK_QUEUE
    assert QUEUES[0] == MAINTENANCE_QUEUE  # sweeps never wait behind a backlog
    assert QUEUES.index(TRANSACTIONAL_QUEUE) < QUEUES.index(BULK_QUEUE)


def test_the_celery_app_is_configured_for_a_safe_redis_broker(make_settings, sqlite_url):
    client = Postroom(
        make_settings(
            database_url=sqlite_url, broker_url="redis://127.0.0.1:6399/0", broker_timeout_seconds=3
        )
    )
    conf = client.celery.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_ignore_result is True
    assert not conf.result_backend
    options = conf.broker_transport_options
    assert options["socket_timeout"] == 3
    assert options["socket_connect_timeout"] == 3
    # kombu drains queues in the order the worker lists them, instead of round-robin
    assert options["queue_order_strategy"] == "priority"
    assert [q.name for q in conf.task_queues] == list(QUEUES)
    schedule = conf.beat_schedule
    assert schedule[DISPATCH_DUE_TASK]["options"]["queue"] == MAINTENANCE_QUEUE
    assert schedule[RECOVER_EXPIRED_TASK]["task"] == RECOVER_EXPIRED_TASK
    assert {DELIVER_TASK, DISPATCH_DUE_TASK, RECOVER_EXPIRED_TASK} <= set(client.celery.tasks)
    client.close()


def test_the_deliver_task_body_delivers_through_the_client(client, outbox):
    message = client.send("a@example.com", "Hi", text="x")
    client.celery.tasks[DELIVER_TASK].run([message.id])
    assert client.get_message(message.id).status == "sent"
    assert len(outbox) == 1
