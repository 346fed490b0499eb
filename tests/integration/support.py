"""Reading the outbox and the broker from the test process while workers deliver."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Collection

from sqlalchemy import select

from postroom.client import Postroom
from postroom.events import MessageEvent
from postroom.messages import FINAL, Message
from postroom.tasks import QUEUES
from tests.servers import RedisServer

Trail = list[tuple[str, int | None]]


def wait_until_final(client: Postroom, ids: Collection[str], *, timeout: float = 60.0) -> None:
    """Block until every message among ``ids`` has a final status (sent, failed, ...)."""
    deadline = time.monotonic() + timeout
    pending = len(ids)
    while time.monotonic() < deadline:
        pending = len(ids) - sum(status in FINAL for status in statuses(client, ids).values())
        if not pending:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{pending} of {len(ids)} messages not final after {timeout}s")


def statuses(client: Postroom, ids: Collection[str]) -> dict[str, str]:
    """The current status of each message."""
    with client.sessions() as session:
        rows = session.execute(select(Message.id, Message.status).where(Message.id.in_(ids)))
        return {row.id: row.status for row in rows}


def event_trails(client: Postroom, ids: Collection[str]) -> dict[str, Trail]:
    """Each message's events as (status, code), oldest first."""
    trails: dict[str, Trail] = {i: [] for i in ids}
    with client.sessions() as session:
        events = session.scalars(
            select(MessageEvent)
            .where(MessageEvent.message_id.in_(ids))
            .order_by(MessageEvent.message_id, MessageEvent.id)
        )
        for event in events:
            trails[event.message_id].append((event.status, event.code))
    return trails


def queued_tasks(redis_server: RedisServer) -> int:
    """How many tasks wait in postroom's queues on the broker."""
    redis = redis_server.client()
    try:
        return sum(redis.llen(queue) for queue in QUEUES)
    finally:
        redis.close()


def wait_until_broker_idle(redis_server: RedisServer, *, timeout: float = 30.0) -> None:
    """Block until no task waits in a queue and none is still running.

    Tasks are acknowledged late, after they ran; kombu keeps the unacknowledged ones in the
    ``unacked`` hash until then. A task is briefly in neither place between the worker's BRPOP
    and its HSET, so idleness must be seen twice in a row.
    """
    redis = redis_server.client()
    try:
        deadline = time.monotonic() + timeout
        idle_polls = 0
        while time.monotonic() < deadline:
            busy = sum(redis.llen(queue) for queue in QUEUES) or redis.hlen("unacked")
            idle_polls = 0 if busy else idle_polls + 1
            if idle_polls == 2:
                return
            time.sleep(0.1)
    finally:
        redis.close()
    raise TimeoutError(f"tasks still queued or running after {timeout}s")


def send_many(client: Postroom, count: int) -> dict[str, str]:
    """Send ``count`` messages; return each message's id by its Message-ID header."""
    sent = {}
    for n in range(count):
        message = client.send(f"rcpt{n}@example.com", f"Message {n}", text=f"body {n}")
        sent[message.message_id_header] = message.id
    return sent


def queued_ids(redis_server: RedisServer) -> list[str]:
    """Every message id carried by the deliver tasks waiting in the broker's queues."""
    redis = redis_server.client()
    try:
        raw = [item for queue in QUEUES for item in redis.lrange(queue, 0, -1)]
    finally:
        redis.close()
    ids: list[str] = []
    for item in raw:
        envelope = json.loads(item)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        ids.extend(args[0])
    return ids
