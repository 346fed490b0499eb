"""drain(): a transactional task claims full batch after full batch until it should stop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from postroom.client import Postroom
from postroom.errors import PermanentFailure, TemporaryFailure
from postroom.messages import MessageStatus
from postroom.tasks import DELIVER_TASK
from postroom.transports import Transport
from postroom.transports.base import Envelope, SendResult
from tests.integration.support import statuses as status_by_id
from tests.test_delivery import Unreliable

BATCH = 10
AMPLE = 60.0  # seconds: no drain in these tests comes near it


@pytest.fixture
def make_client(make_settings, sqlite_url, outbox) -> Iterator[Callable[..., Postroom]]:
    clients: list[Postroom] = []

    def make(transport: Transport | None = None, **overrides: object) -> Postroom:
        settings = make_settings(database_url=sqlite_url, batch_size=BATCH, **overrides)
        client = Postroom(settings, publish=lambda s, i: None, transport=transport)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def queue(client: Postroom, count: int, stream: str = "transactional") -> list[str]:
    return [
        client.send(f"u{i}@example.com", f"m{i}", text="x", stream=stream).id for i in range(count)
    ]


def statuses(client: Postroom, ids: list[str]) -> Counter[str]:
    """How many of ``ids`` are in each status."""
    return Counter(status_by_id(client, ids).values())


def test_it_claims_batch_after_batch_until_one_falls_short_and_leaves_other_streams(
    make_client, outbox
):
    client = make_client()
    ids = queue(client, 2 * BATCH + 5)
    bulk = queue(client, BATCH, stream="bulk")
    report = client.drain([], stream="transactional", budget_seconds=AMPLE)
    assert (report.claimed, report.sent, report.deferred, report.failed) == (25, 25, 0, 0)
    assert statuses(client, ids) == {MessageStatus.SENT: 25}
    assert statuses(client, bulk) == {MessageStatus.QUEUED: BATCH}
    assert len(outbox) == 25


def test_it_stops_at_an_empty_claim_when_the_backlog_is_a_whole_number_of_batches(make_client):
    client = make_client()
    queue(client, 2 * BATCH)
    report = client.drain([], stream="transactional", budget_seconds=AMPLE)
    assert (report.claimed, report.sent) == (20, 20)
    assert client.deliver([], stream="transactional").claimed == 0


class Arrivals(Unreliable):
    """Sends everything; its first send queues a new message, as a web request would meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.client: Postroom | None = None
        self.arrived: list[str] = []

    def send(self, envelope: Envelope) -> SendResult:
        if self.client is not None and not self.arrived:
            self.arrived.append(self.client.send("new@example.com", "new", text="x").id)
        return super().send(envelope)


def test_a_short_batch_ends_it_and_a_message_arriving_meanwhile_waits_for_its_own_task(
    make_client,
):
    transport = Arrivals()
    client = transport.client = make_client(transport=transport)
    ids = queue(client, BATCH - 5)
    report = client.drain([], stream="transactional", budget_seconds=AMPLE)
    assert (report.claimed, report.sent) == (BATCH - 5, BATCH - 5)
    assert statuses(client, ids) == {MessageStatus.SENT: BATCH - 5}
    # the stream was drained when the batch fell short; the new one has its own task
    assert client.get_message(transport.arrived[0]).status == MessageStatus.QUEUED


def test_the_ids_it_was_given_go_in_its_first_batch(make_client):
    client = make_client()
    later = queue(client, BATCH)
    given = client.send("given@example.com", "given", text="x").id
    report = client.drain([given], stream="transactional", budget_seconds=0)
    assert report.claimed == BATCH
    assert client.get_message(given).status == MessageStatus.SENT
    assert statuses(client, later) == {MessageStatus.SENT: BATCH - 1, MessageStatus.QUEUED: 1}


def test_a_spent_budget_ends_it_after_the_first_batch_however_full(make_client):
    client = make_client()
    ids = queue(client, 3 * BATCH)
    report = client.drain([], stream="transactional", budget_seconds=0)
    assert (report.claimed, report.sent) == (BATCH, BATCH)
    assert statuses(client, ids) == {MessageStatus.SENT: BATCH, MessageStatus.QUEUED: 2 * BATCH}


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (TemporaryFailure("try later", transport="unreliable", code=451), "deferred"),
        (PermanentFailure("no such user", transport="unreliable", code=550), "failed"),
    ],
)
def test_a_batch_not_sent_in_full_ends_it(make_client, error, outcome):
    transport = Unreliable(error)
    client = make_client(transport=transport)
    ids = queue(client, 3 * BATCH)
    report = client.drain([], stream="transactional", budget_seconds=AMPLE)
    assert (report.claimed, report.sent, getattr(report, outcome)) == (BATCH, BATCH - 1, 1)
    assert len(transport.sent) == BATCH - 1
    assert statuses(client, ids) == {
        MessageStatus.SENT: BATCH - 1,
        outcome: 1,
        MessageStatus.QUEUED: 2 * BATCH,
    }


def test_a_limit_that_defers_ends_it_without_spending_attempts(make_client, redis_server):
    client = make_client(
        limits_redis_url=redis_server.url, limits={"default": {"daily_quota": BATCH + 3}}
    )
    ids = queue(client, 4 * BATCH)
    report = client.drain([], stream="transactional", budget_seconds=AMPLE)
    # the second batch meets the quota: 3 go out, 7 are deferred, and no third batch is claimed
    assert (report.claimed, report.sent, report.deferred) == (2 * BATCH, BATCH + 3, BATCH - 3)
    assert statuses(client, ids) == {
        MessageStatus.SENT: BATCH + 3,
        MessageStatus.DEFERRED: BATCH - 3,
        MessageStatus.QUEUED: 2 * BATCH,
    }
    deferred = [m for m in map(client.get_message, ids) if m.status == MessageStatus.DEFERRED]
    assert {m.attempts for m in deferred} == {0}  # held back by the quota, never tried


def test_the_transactional_task_drains_and_the_bulk_task_takes_one_batch(make_client):
    client = make_client()
    transactional = queue(client, 3 * BATCH)
    bulk = queue(client, 3 * BATCH, stream="bulk")
    task = client.celery.tasks[DELIVER_TASK]
    task.run([], "bulk")
    assert statuses(client, bulk) == {MessageStatus.SENT: BATCH, MessageStatus.QUEUED: 2 * BATCH}
    task.run([], "transactional")
    assert statuses(client, transactional) == {MessageStatus.SENT: 3 * BATCH}


def test_a_zero_drain_setting_makes_the_transactional_task_take_one_batch(make_client):
    client = make_client(transactional_drain_seconds=0)
    ids = queue(client, 3 * BATCH)
    client.celery.tasks[DELIVER_TASK].run([], "transactional")
    assert statuses(client, ids) == {MessageStatus.SENT: BATCH, MessageStatus.QUEUED: 2 * BATCH}
