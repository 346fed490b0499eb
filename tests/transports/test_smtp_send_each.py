"""smtp:// ``send_each``: each message's data written together with the next envelope.

The scripted server (a raw asyncio socket recording every read) shows what goes out in one
write and gives the replies aiosmtpd will not; aiosmtpd covers SMTPUTF8 and a hang-up after
the data. The generic ``send_each`` for transports that do not stream is at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest

import tests.transports.test_smtp_pipelining as pipelining_tests
from postroom.errors import PermanentFailure, TemporaryFailure
from postroom.transports.base import (
    Envelope,
    Handed,
    SendResult,
    StreamingTransport,
    send_each,
)
from postroom.transports.memory import MemoryTransport
from postroom.transports.smtp import SmtpConfig, SmtpTransport
from tests.servers import free_port
from tests.transports.contract import make_envelope
from tests.transports.test_smtp import smtp_url
from tests.transports.test_smtp_pipelining import (
    HANG_UP,
    PipeliningSink,
    ScriptedServer,
    envelope_bytes,
)

# the fixtures of the pipelining tests: the recording aiosmtpd sink and the scripted server
make_sink = pipelining_tests.make_sink
make_scripted = pipelining_tests.make_scripted
scripted = pipelining_tests.scripted
scripted_transport = pipelining_tests.scripted_transport


@dataclass
class Pulled:
    """Iterable over ``envelopes`` that counts how many the transport has asked for so far."""

    envelopes: list[Envelope]
    count: int = 0

    def __iter__(self) -> Iterator[Envelope]:
        for envelope in self.envelopes:
            self.count += 1
            yield envelope


def data_lines(envelope: Envelope) -> bytes:
    """The message's data and its "." as the server reads them (none of these need stuffing)."""
    assert not envelope.data.startswith(b".") and b"\r\n." not in envelope.data
    return envelope.data + b".\r\n"


def sent_ok(outcomes: list[Handed]) -> list[bool]:
    return [isinstance(outcome, SendResult) and outcome.code == 250 for _, outcome in outcomes]


# --- the wire ---------------------------------------------------------------------------------


def test_each_message_data_goes_out_in_one_read_with_the_next_envelope(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    first, second, third = envelopes = [make_envelope() for _ in range(3)]

    outcomes = list(scripted_transport.send_each(envelopes))

    assert scripted.reads[1:] == [
        envelope_bytes(first),
        data_lines(first) + envelope_bytes(second),
        data_lines(second) + envelope_bytes(third),
        data_lines(third),
    ]
    assert [envelope for envelope, _ in outcomes] == envelopes
    assert sent_ok(outcomes) == [True, True, True]
    assert scripted.messages == [e.data for e in envelopes]
    assert scripted.connections == 1


def test_outcomes_come_in_order_and_envelopes_are_read_at_most_two_ahead(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    envelopes = [make_envelope() for _ in range(5)]
    source = Pulled(envelopes)
    outcomes: list[Handed] = []
    ahead = []

    for handed in scripted_transport.send_each(source):
        outcomes.append(handed)
        ahead.append(source.count - len(outcomes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    assert sent_ok(outcomes) == [True] * 5
    # the next message is built while the server answers, but no further ahead than that
    assert max(ahead) <= 2
    assert scripted.messages == [e.data for e in envelopes]


def test_without_pipelining_each_message_goes_step_by_step(
    make_scripted: Callable[..., ScriptedServer], make_transport: Callable[[str], SmtpTransport]
) -> None:
    scripted = make_scripted(pipelining=False)
    transport = make_transport(f"smtp://127.0.0.1:{scripted.port}?timeout=5")
    envelopes = [make_envelope() for _ in range(3)]

    outcomes = list(transport.send_each(envelopes))

    assert sent_ok(outcomes) == [True, True, True]
    # one command per read, each waiting for its reply; smtplib writes them in lower case
    expected = [
        read.upper()
        for e in envelopes
        for read in [*envelope_bytes(e).splitlines(keepends=True), data_lines(e)]
    ]
    assert [read.upper() for read in scripted.reads[1:]] == expected
    assert scripted.messages == [e.data for e in envelopes]
    assert scripted.connections == 1


# --- refusals ---------------------------------------------------------------------------------


def test_a_refused_data_fails_that_message_alone_on_the_same_connection(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    scripted.script("END", "250 2.0.0 ok", "550 5.7.1 rejected", "250 2.0.0 ok")
    envelopes = [make_envelope() for _ in range(3)]

    outcomes = list(scripted_transport.send_each(envelopes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    (_, first), (_, second), (_, third) = outcomes
    assert isinstance(first, SendResult) and first.code == 250
    assert isinstance(second, PermanentFailure) and second.code == 550
    assert second.detail == "550 5.7.1 rejected"
    assert isinstance(third, SendResult) and third.detail == "250 2.0.0 ok"
    assert scripted.messages == [e.data for e in envelopes]  # the server read all three
    assert scripted.connections == 1


def test_every_recipient_refused_fails_that_message_and_resets_before_the_next(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    first, second, third = envelopes = [make_envelope() for _ in range(3)]
    scripted.script("RCPT", *["250 2.1.5 ok"] * len(first.recipients))
    scripted.script("RCPT", *["550 5.1.1 no such user"] * len(second.recipients))

    outcomes = list(scripted_transport.send_each(envelopes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    assert sent_ok(outcomes) == [True, False, True]
    refused = outcomes[1][1]
    assert isinstance(refused, PermanentFailure) and refused.code == 550
    # the 554 to DATA was read and the transaction reset before message 3's envelope went out
    assert [read.upper() for read in scripted.reads[1:]] == [
        envelope_bytes(first).upper(),
        (data_lines(first) + envelope_bytes(second)).upper(),
        b"RSET\r\n",
        envelope_bytes(third).upper(),
        data_lines(third).upper(),
    ]
    assert scripted.messages == [first.data, third.data]
    assert scripted.connections == 1


def test_a_hang_up_on_the_lone_dot_of_a_refused_message_fails_it_alone_and_sends_the_rest(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    first, second, third = envelopes = [make_envelope() for _ in range(3)]
    scripted.script("RCPT", *["250 2.1.5 ok"] * len(first.recipients))
    scripted.script("RCPT", *["550 5.1.1 no such user"] * len(second.recipients))
    scripted.script("DATA", "354 go ahead", "354 go ahead anyway")
    scripted.script("END", "250 2.0.0 ok", HANG_UP)

    outcomes = list(scripted_transport.send_each(envelopes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    assert sent_ok(outcomes) == [True, False, True]
    refused = outcomes[1][1]
    assert isinstance(refused, PermanentFailure) and refused.code == 550
    # the empty data phase the server hung up on, then message 3 on a new connection, once
    assert scripted.messages == [first.data, b"", third.data]
    assert scripted.connections == 2


def test_smtputf8_not_offered_fails_that_message_alone_and_writes_none_of_it(
    make_sink: Callable[..., PipeliningSink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(options={"enable_SMTPUTF8": False})
    transport = make_transport(smtp_url(sink))
    first, third = make_envelope(), make_envelope()
    utf8 = replace(make_envelope(), recipients=["jörg@bücher.example"], smtputf8=True)
    envelopes = [first, utf8, third]

    outcomes = list(transport.send_each(envelopes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    assert sent_ok(outcomes) == [True, False, True]
    refused = outcomes[1][1]
    assert isinstance(refused, PermanentFailure)
    assert "SMTPUTF8" in refused.detail
    assert list(sink.message_ids()) == [first.email["Message-ID"], third.email["Message-ID"]]
    assert not any("jörg".encode() in read for read in sink.reads)
    assert sink.connections == 1


# --- broken connections -----------------------------------------------------------------------


def test_a_421_to_the_data_fails_it_and_the_next_goes_once_on_a_fresh_connection(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    scripted.script("END", "421 4.4.2 closing")
    envelopes = [make_envelope() for _ in range(3)]

    outcomes = list(scripted_transport.send_each(envelopes))

    # message 2's envelope went out with message 1's data and was never answered
    assert [envelope for envelope, _ in outcomes] == envelopes
    closed = outcomes[0][1]
    assert isinstance(closed, TemporaryFailure) and closed.code == 421
    assert sent_ok(outcomes) == [False, True, True]
    assert scripted.messages == [e.data for e in envelopes]
    assert scripted.connections == 2


def test_a_hang_up_after_the_data_is_assumed_delivered_and_the_next_is_sent_once(
    make_sink: Callable[..., PipeliningSink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    # the server keeps every message and hangs up before its reply, on every connection
    sink = make_sink(hang_up_after_data=True)
    transport = make_transport(smtp_url(sink))
    envelopes = [make_envelope() for _ in range(3)]

    outcomes = list(transport.send_each(envelopes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    for _, outcome in outcomes:
        assert isinstance(outcome, SendResult)
        assert "assumed delivered" in outcome.detail
    assert sink.message_ids() == {e.email["Message-ID"]: 1 for e in envelopes}
    assert sink.connections == 3


def test_an_envelope_cut_off_twice_fails_as_temporary_and_the_rest_go_on(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    # message 2's envelope is cut off behind message 1's data by a 421 that closes the
    # connection; on the next connection the server hangs up on its MAIL without a 421
    scripted.script("END", "421 4.4.2 closing")
    scripted.script("MAIL", "250 2.1.0 ok", "221 2.0.0 going away")
    first, _, third = envelopes = [make_envelope() for _ in range(3)]

    outcomes = list(scripted_transport.send_each(envelopes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    closed, cut_off, sent = (outcome for _, outcome in outcomes)
    assert isinstance(closed, TemporaryFailure) and closed.code == 421
    assert isinstance(cut_off, TemporaryFailure) and cut_off.code is None
    assert cut_off.detail == "server closed the connection"
    assert isinstance(sent, SendResult) and sent.code == 250
    assert scripted.messages == [first.data, third.data]
    assert scripted.connections == 3


def test_closing_the_stream_early_drops_the_connection_and_sends_nothing_more(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    envelopes = [make_envelope() for _ in range(3)]
    source = Pulled(envelopes)
    stream = scripted_transport.send_each(source)

    envelope, outcome = next(stream)
    stream.close()  # message 2's envelope is on the server, answered with 354
    later = make_envelope()
    result = scripted_transport.send(later)

    assert envelope is envelopes[0] and isinstance(outcome, SendResult)
    assert result.code == 250
    # the open transaction died with the connection: message 2's data never went out, and the
    # next message did not land in its data phase
    assert scripted.messages == [envelopes[0].data, later.data]
    assert scripted.connections == 2
    assert source.count <= 3


def test_an_unreachable_server_fails_every_envelope_alike(
    make_transport: Callable[[str], SmtpTransport],
) -> None:
    transport = make_transport(f"smtp://127.0.0.1:{free_port()}?timeout=5")
    envelopes = [make_envelope() for _ in range(4)]
    source = Pulled(envelopes)

    outcomes = list(transport.send_each(source))

    assert [envelope for envelope, _ in outcomes] == envelopes
    failure = outcomes[0][1]
    assert isinstance(failure, TemporaryFailure)
    assert all(outcome is failure for _, outcome in outcomes)
    assert source.count == len(envelopes)


# --- the generic send_each --------------------------------------------------------------------


@dataclass
class Faulty:
    """A transport without ``send_each`` whose ``send`` raises what is planned per envelope."""

    plan: dict[str, Exception] = field(default_factory=dict)  # by message id
    sent: list[Envelope] = field(default_factory=list)
    name: str = "faulty"

    def send(self, envelope: Envelope) -> SendResult:
        if envelope.message_id in self.plan:
            raise self.plan[envelope.message_id]
        self.sent.append(envelope)
        return SendResult(detail="250 ok", code=250)

    def close(self) -> None:
        return None


def test_smtp_streams_and_the_memory_transport_does_not() -> None:
    assert isinstance(SmtpTransport(SmtpConfig(host="127.0.0.1", port=25)), StreamingTransport)
    assert not isinstance(MemoryTransport(), StreamingTransport)


def test_send_each_calls_send_per_message_and_yields_errors_as_outcomes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    envelopes = [make_envelope() for _ in range(4)]
    refused = PermanentFailure("550 no", transport="faulty", code=550)
    transport = Faulty(
        plan={envelopes[1].message_id: RuntimeError("boom"), envelopes[2].message_id: refused}
    )

    with caplog.at_level(logging.ERROR, logger="postroom.transports.base"):
        outcomes = list(send_each(transport, envelopes))

    assert [envelope for envelope, _ in outcomes] == envelopes
    crashed = outcomes[1][1]
    assert isinstance(crashed, TemporaryFailure)
    assert str(crashed) == "faulty: RuntimeError"
    assert outcomes[2][1] is refused
    assert transport.sent == [envelopes[0], envelopes[3]]
    assert [r.getMessage() for r in caplog.records] == [
        f"transport faulty raised while sending {envelopes[1].message_id}"
    ]


def test_send_each_reads_the_envelopes_one_at_a_time() -> None:
    envelopes = [make_envelope() for _ in range(3)]
    source = Pulled(envelopes)

    counts = [source.count for _ in send_each(Faulty(), source)]

    assert counts == [1, 2, 3]
