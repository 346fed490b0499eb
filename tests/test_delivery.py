from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from postroom import claims
from postroom.client import Postroom
from postroom.db import utcnow
from postroom.delivery import Outcome, record_outcomes
from postroom.errors import TemporaryFailure
from postroom.messages import MessageStatus
from postroom.transports.base import Envelope, SendResult


@pytest.fixture
def smtp_client(make_settings, sqlite_url, smtp_sink):
    client = Postroom(
        make_settings(database_url=sqlite_url, transport_url=smtp_sink.url),
        publish=lambda s, i: None,
    )
    yield client
    client.close()


def statuses(client, message_id):
    return [(e.status, e.code) for e in client.get_events(message_id)]


def claimed(client, count):
    """``count`` new messages claimed as a worker claims them: their ids, and the claim's time."""
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(count)]
    now = utcnow()
    with client.sessions.begin() as session:
        claims.claim_due(session, ids, lease=timedelta(seconds=30), now=now)
    return ids, now


def test_a_delivered_message_is_sent_once_with_its_events(client, outbox):
    message = client.send("a@example.com", "Hi", text="x", bcc="hidden@example.com")
    report = client.deliver([message.id, message.id])
    assert (report.claimed, report.sent) == (1, 1)
    assert client.deliver([message.id]).claimed == 0
    assert len(outbox) == 1
    assert outbox[0].recipients == ["a@example.com", "hidden@example.com"]
    assert "Bcc" not in outbox[0].email
    stored = client.get_message(message.id)
    assert stored.status == MessageStatus.SENT
    assert stored.sent_at is not None
    assert stored.transport == "default"  # the configured name, not the kind
    assert [s for s, _ in statuses(client, message.id)] == ["queued", "sending", "sent"]


def test_a_temporary_smtp_refusal_defers_with_backoff_then_sends(smtp_client, smtp_sink):
    message = smtp_client.send("a@example.com", "Hi", text="x")
    smtp_sink.refuse("451 4.3.0 try again later")
    assert smtp_client.deliver([message.id]).deferred == 1
    deferred = smtp_client.get_message(message.id)
    assert deferred.status == MessageStatus.DEFERRED
    assert deferred.last_error is not None and "451" in deferred.last_error
    assert deferred.next_attempt_at is not None and deferred.next_attempt_at > utcnow()
    # not due yet: a redelivered task does nothing
    assert smtp_client.deliver([message.id]).claimed == 0
    smtp_client.clock = lambda: utcnow() + timedelta(seconds=5)
    assert smtp_client.deliver([message.id]).sent == 1
    assert smtp_sink.message_ids() == {f"<{message.id}@example.com>": 1}
    assert statuses(smtp_client, message.id) == [
        ("queued", None),
        ("sending", None),
        ("deferred", 451),
        ("sending", None),
        ("sent", 250),
    ]


def test_a_permanent_smtp_refusal_fails_after_one_attempt(smtp_client, smtp_sink):
    message = smtp_client.send("a@example.com", "Hi", text="x")
    smtp_sink.refuse("550 5.1.1 no such user", stage="RCPT")
    assert smtp_client.deliver([message.id]).failed == 1
    failed = smtp_client.get_message(message.id)
    assert failed.status == MessageStatus.FAILED
    assert failed.attempts == 1
    assert statuses(smtp_client, message.id)[-1] == ("failed", 550)
    assert smtp_sink.received == []


def test_temporary_failures_fail_once_attempts_are_exhausted(smtp_client, smtp_sink):
    message = smtp_client.send("a@example.com", "Hi", text="x")
    attempts = smtp_client.settings.retry.max_attempts
    smtp_sink.refuse("421 4.3.2 system not accepting network messages", times=attempts)
    moment = utcnow()
    for _ in range(attempts):
        smtp_client.clock = lambda moment=moment: moment
        smtp_client.deliver([message.id])
        moment += timedelta(seconds=10)
    final = smtp_client.get_message(message.id)
    assert final.status == MessageStatus.FAILED
    assert final.attempts == attempts
    assert final.last_error is not None and final.last_error.startswith(
        f"gave up after {attempts} attempts"
    )


class Unreliable:
    """A transport whose next sends raise what the test queued (a bug, an outage)."""

    name = "unreliable"

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.sent: list[Envelope] = []

    def send(self, envelope: Envelope) -> SendResult:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(envelope)
        return SendResult(detail="ok", code=250)

    def close(self) -> None:
        return None


def test_an_unexpected_transport_error_defers_instead_of_losing_the_message(settings):
    transport = Unreliable(RuntimeError("boom"))
    client = Postroom(settings, publish=lambda s, i: None, transport=transport)
    message = client.send("a@example.com", "Hi", text="x")
    assert client.deliver([message.id]).deferred == 1
    assert client.get_message(message.id).last_error == "unreliable: RuntimeError"
    client.clock = lambda: utcnow() + timedelta(seconds=5)
    assert client.deliver([message.id]).sent == 1
    assert len(transport.sent) == 1
    client.close()


def test_one_failure_in_a_batch_does_not_affect_the_others(settings):
    transport = Unreliable(TemporaryFailure("local error", transport="unreliable", code=451))
    client = Postroom(settings, publish=lambda s, i: None, transport=transport)
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(3)]
    report = client.deliver(ids)
    assert (report.claimed, report.sent, report.deferred) == (3, 2, 1)
    assert sorted(client.get_message(i).status for i in ids) == ["deferred", "sent", "sent"]
    client.close()


def test_provider_push_back_pauses_the_transport_without_spending_attempts(smtp_client, smtp_sink):
    ids = [smtp_client.send("a@example.com", f"m{i}", text="x").id for i in range(4)]
    smtp_sink.refuse("421 4.7.28 too many messages, slow down")
    report = smtp_client.deliver(ids)
    assert (report.sent, report.deferred) == (0, 4)
    first, *rest = (smtp_client.get_message(i) for i in ids)
    assert first.attempts == 1  # it was tried and refused
    assert [m.attempts for m in rest] == [0, 0, 0]  # held back, not tried
    assert all("push-back" in (m.last_error or "") for m in rest)
    paused_until = rest[0].next_attempt_at
    assert paused_until is not None and paused_until > utcnow()
    # while the pause lasts, due messages are held back again and nothing reaches the server
    smtp_client.clock = lambda: utcnow() + timedelta(seconds=15)
    assert smtp_client.deliver([smtp_client.send("b@example.com", "later", text="x").id]).sent == 0
    assert smtp_sink.received == []
    # after it, everything goes out
    smtp_client.clock = lambda: utcnow() + timedelta(minutes=5)
    assert smtp_client.deliver(ids).sent == 4


def test_recorded_outcomes_keep_their_instant_detail_code_and_refund(client):
    ids, now = claimed(client, 3)
    # an instant in another zone, to the microsecond; a detail JSON and SQL would both quote
    retry_at = (now + timedelta(minutes=5, microseconds=123)).astimezone(
        timezone(timedelta(hours=-3))
    )
    detail = 'try "later", Grüße \\ 451'
    outcomes = [
        Outcome(ids[0], MessageStatus.SENT, "250 ok", 250, transport="default"),
        Outcome(ids[1], MessageStatus.DEFERRED, detail, 451, retry_at, transport="default"),
        Outcome(ids[2], MessageStatus.DEFERRED, "limited", None, retry_at, attempt_refunded=True),
    ]
    with client.sessions.begin() as session:
        record_outcomes(session, outcomes, now=now)
    sent, deferred, held = map(client.get_message, ids)
    assert (sent.status, sent.sent_at, sent.last_error, sent.attempts) == ("sent", now, None, 1)
    assert (deferred.status, deferred.next_attempt_at, deferred.last_error) == (
        "deferred",
        retry_at,
        detail,
    )
    assert (deferred.attempts, held.attempts, held.transport) == (1, 0, None)
    assert statuses(client, ids[1])[-1] == ("deferred", 451)
    assert [e.detail for e in client.get_events(ids[1])][-1] == detail


def test_a_reply_holding_a_nul_is_recorded_with_a_replacement_character(client):
    # PostgreSQL text cannot hold NUL: unrecorded, the batch's sent messages would be resent
    [message_id], now = claimed(client, 1)
    outcome = Outcome(message_id, MessageStatus.SENT, "250 ok\x00queued", 250, transport="default")
    with client.sessions.begin() as session:
        record_outcomes(session, [outcome], now=now)
    assert client.get_message(message_id).status == MessageStatus.SENT
    assert [e.detail for e in client.get_events(message_id)][-1] == "250 ok\ufffdqueued"
