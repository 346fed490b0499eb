"""Delivery through a streaming transport: outcomes as they come, push-back closes the stream."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from datetime import timedelta

import pytest

from postroom.client import Postroom
from postroom.db import utcnow
from postroom.errors import TemporaryFailure
from postroom.limits import pushback_until
from postroom.messages import MessageStatus
from postroom.transports.base import Envelope, Handed, SendResult, StreamingTransport

PUSH_BACK = TemporaryFailure(
    "421 4.7.28 too many messages, slow down", transport="stream", code=421
)


class Streaming:
    """A streaming transport: the n-th envelope (0-based) gets what ``plan`` says, or is sent."""

    name = "stream"

    def __init__(self, plan: dict[int, Exception] | None = None) -> None:
        self.plan = dict(plan or {})
        self.pulled: list[str] = []  # message ids, in the order the stream read them
        self.sent: list[str] = []
        self.closed_early = False
        self.finished = False

    def send(self, envelope: Envelope) -> SendResult:
        raise AssertionError("a streaming transport is driven through send_each")

    def close(self) -> None:
        return None

    def send_each(self, envelopes: Iterable[Envelope]) -> Generator[Handed, None, None]:
        try:
            for index, envelope in enumerate(envelopes):
                self.pulled.append(envelope.message_id)
                planned = self.plan.pop(index, None)
                if isinstance(planned, TemporaryFailure):
                    yield envelope, planned
                elif planned is not None:
                    raise planned
                else:
                    self.sent.append(envelope.message_id)
                    yield envelope, SendResult(detail="250 ok", code=250)
        except GeneratorExit:
            self.closed_early = True
            raise
        finally:
            self.finished = True


@pytest.fixture
def make_client(make_settings, sqlite_url):
    clients = []

    def make(transport):
        client = Postroom(
            make_settings(database_url=sqlite_url), publish=lambda s, i: None, transport=transport
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_the_fake_is_a_streaming_transport_and_its_reply_a_push_back():
    assert isinstance(Streaming(), StreamingTransport)
    assert pushback_until(PUSH_BACK.code, PUSH_BACK.detail, now=utcnow()) is not None


def test_push_back_mid_stream_closes_it_and_holds_back_the_rest_without_an_attempt(make_client):
    transport = Streaming({1: PUSH_BACK})
    client = make_client(transport)
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(5)]

    report = client.deliver(ids)

    assert (report.claimed, report.sent, report.deferred, report.failed) == (5, 1, 4, 0)
    assert transport.closed_early and transport.finished
    # the stream read no envelope beyond the pushed-back one: the rest were never built
    sent, pushed = transport.pulled
    assert transport.sent == [sent]
    held = [i for i in ids if i not in (sent, pushed)]
    assert len(held) == 3
    assert client.get_message(sent).status == MessageStatus.SENT
    refused = client.get_message(pushed)
    assert (refused.status, refused.attempts) == (MessageStatus.DEFERRED, 1)
    assert refused.last_error is not None and "421" in refused.last_error
    for message in map(client.get_message, held):
        assert (message.status, message.attempts) == (MessageStatus.DEFERRED, 0)
        assert "push-back" in (message.last_error or "")
        assert message.next_attempt_at is not None and message.next_attempt_at > utcnow()


def test_a_stream_that_raises_defers_every_message_without_an_outcome_and_loses_none(
    make_client,
):
    transport = Streaming({1: RuntimeError("boom")})
    client = make_client(transport)
    ids = [client.send("a@example.com", f"m{i}", text="x").id for i in range(4)]

    report = client.deliver(ids)

    assert (report.claimed, report.sent, report.deferred, report.failed) == (4, 1, 3, 0)
    [sent] = transport.sent
    rest = [i for i in ids if i != sent]
    assert client.get_message(sent).status == MessageStatus.SENT
    for message in map(client.get_message, rest):
        assert (message.status, message.attempts) == (MessageStatus.DEFERRED, 1)
        assert message.last_error == "stream: RuntimeError"
    # once due again, each of them goes out exactly once
    client.clock = lambda: utcnow() + timedelta(seconds=5)
    assert client.deliver(ids).sent == 3
    assert sorted(transport.sent) == sorted(ids)
