from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import kombu
import pytest
from celery import Celery

from postroom.client import Postroom
from postroom.tasks import (
    BULK_QUEUE,
    DELIVER_TASK,
    DISPATCH_DUE_TASK,
    MAINTENANCE_QUEUE,
    QUEUES,
    RECOVER_EXPIRED_TASK,
    TRANSACTIONAL_QUEUE,
    DeliveryPublisher,
    create_celery,
    queue_for,
)
from tests.integration.support import queued_ids
from tests.servers import free_port, unavailable


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


@pytest.fixture
def brokered(make_settings, sqlite_url, redis_server) -> Iterator[Postroom]:
    """A client publishing to a real Redis broker."""
    client = Postroom(make_settings(database_url=sqlite_url, broker_url=redis_server.url))
    yield client
    client.close()


def sent_and_published(client: Postroom, count: int) -> list[str]:
    ids = [client.send(f"user{n}@example.com", "Hi", text="x").id for n in range(count)]
    assert client.flush_publications()
    return ids


def test_the_first_send_sets_publishing_up_in_its_own_thread_and_a_broker_down_does_not_fail_it(
    make_settings, sqlite_url, monkeypatch
):
    # the one-time set-up is CPU the publishing thread would take from the sends after it
    built_in: list[threading.Thread] = []

    def recording(client: Postroom) -> Celery:
        built_in.append(threading.current_thread())
        return create_celery(client)

    monkeypatch.setattr("postroom.client.create_celery", recording)
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    client = Postroom(make_settings(database_url=sqlite_url, broker_url=nothing_listens))
    try:
        message = client.send("a@example.com", "Hi", text="x")
        client.send("b@example.com", "Hi", text="x")
        assert built_in == [threading.current_thread()]
        assert client.get_message(message.id).status == "queued"  # the sweep's to publish
    finally:
        client.close()


def test_preparing_to_publish_never_raises_and_the_publish_still_does():
    def broken_app() -> Celery:
        raise ValueError("no such broker transport")

    publisher = DeliveryPublisher(broken_app)
    publisher.prepare()
    with pytest.raises(ValueError, match="no such broker transport"):
        publisher.publish("transactional", ["01J"])


def test_a_published_task_is_the_one_a_worker_runs(brokered, redis_server):
    [message_id] = sent_and_published(brokered, 1)
    [raw] = redis_server.client().lrange(TRANSACTIONAL_QUEUE, 0, -1)
    envelope = json.loads(raw)
    assert envelope["headers"]["task"] == DELIVER_TASK
    args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    assert (args, kwargs) == ([[message_id], "transactional"], {})
    assert envelope["properties"]["delivery_info"]["routing_key"] == TRANSACTIONAL_QUEUE


def test_a_connection_the_broker_dropped_is_replaced_without_losing_or_doubling_a_task(
    brokered, redis_server
):
    first = sent_and_published(brokered, 2)
    redis = redis_server.client()
    # as a broker restart or an idle timeout would: every client connection but this one goes
    assert redis.client_kill_filter(_type="normal", skipme=True) >= 1
    second = sent_and_published(brokered, 2)
    assert sorted(queued_ids(redis_server)) == sorted(first + second)


def test_a_broker_restart_costs_no_task_sent_after_it(brokered, redis_server):
    before = sent_and_published(brokered, 1)
    redis_server.stop()
    redis_server.start()  # no persistence: what was queued is gone, the sweep's case
    after = sent_and_published(brokered, 3)
    assert sorted(queued_ids(redis_server)) == sorted(after)
    assert set(before).isdisjoint(queued_ids(redis_server))


def test_a_forked_child_publishes_on_its_own_connection(brokered, redis_server):
    parent_before = sent_and_published(brokered, 1)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        status = 1
        try:
            ids = sent_and_published(brokered, 2)
            os.write(write, json.dumps(ids).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with os.fdopen(read) as pipe:
        child_ids = json.loads(pipe.read())
    # the child's exit did not close the parent's socket under it
    parent_after = sent_and_published(brokered, 1)
    assert sorted(queued_ids(redis_server)) == sorted(parent_before + child_ids + parent_after)


@dataclass
class RabbitVhost:
    """A virtual host of its own on the local RabbitMQ, reached as guest."""

    name: str
    rabbitmqctl: str

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def ctl(self, *args: str) -> None:
        subprocess.run([self.rabbitmqctl, "-q", *args], check=True, capture_output=True, timeout=60)

    def close_connections(self) -> None:
        """As a broker restart or a network cut would, from the broker's side."""
        self.ctl("close_all_connections", "--vhost", self.name, "test")


@pytest.fixture
def rabbitmq_vhost() -> Iterator[RabbitVhost]:
    """A throwaway virtual host on the local RabbitMQ (127.0.0.1:5672), deleted afterwards."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        unavailable("rabbitmqctl is not installed")
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        unavailable("RabbitMQ does not answer on 127.0.0.1:5672")
    vhost = RabbitVhost(f"postroom-test-{uuid.uuid4().hex[:8]}", rabbitmqctl)
    vhost.ctl("add_vhost", vhost.name)
    try:
        vhost.ctl("set_permissions", "-p", vhost.name, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        vhost.ctl("delete_vhost", vhost.name)


def test_on_a_broker_that_does_not_reconnect_by_itself_a_closed_connection_is_replaced(
    make_settings, sqlite_url, rabbitmq_vhost
):
    # redis-py reconnects on its own; py-amqp does not, so this is where the publisher's
    # own retry on a fresh connection shows
    url = rabbitmq_vhost.url
    client = Postroom(make_settings(database_url=sqlite_url, broker_url=url))
    try:
        first = sent_and_published(client, 1)
        rabbitmq_vhost.close_connections()
        second = sent_and_published(client, 1)
        with kombu.Connection(url) as connection:
            queue = connection.SimpleQueue(TRANSACTIONAL_QUEUE)
            carried = []
            for _ in first + second:
                task = queue.get(timeout=5)
                carried.extend(task.payload[0][0])
                task.ack()
            assert queue.qsize() == 0
            queue.close()
        assert carried == first + second
    finally:
        client.close()
