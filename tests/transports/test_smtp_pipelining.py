"""smtp:// with RFC 2920 PIPELINING: the envelope in one write, replies judged as step by step.

Two kinds of server: aiosmtpd told to advertise PIPELINING (it handles pipelined input but does
not announce it) and recording every read it makes, and a minimal scripted SMTP server on a raw
asyncio socket for the replies aiosmtpd cannot be made to give (a refused DATA command, a 354
after every recipient was refused, a 421 that closes the connection).
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

import tests.transports.test_smtp as smtp_tests
from postroom.errors import PermanentFailure, TemporaryFailure
from postroom.transports.base import Envelope
from postroom.transports.smtp import SmtpConfig, SmtpTransport
from tests.servers import free_port, wait_for_port
from tests.transports.contract import make_envelope
from tests.transports.test_smtp import Sink, Tls, server_options, smtp_url

REPO = Path(__file__).resolve().parents[2]

# the session's throwaway CA and server certificate, shared with test_smtp.py
tls = smtp_tests.tls


# --- aiosmtpd, advertising PIPELINING and recording its reads ---------------------------------


class _RecordingSMTP(SMTP):
    """aiosmtpd's protocol, keeping every chunk the socket delivered in one read."""

    def __init__(self, handler: Any, *, reads: list[bytes], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._reads = reads

    def data_received(self, data: bytes) -> None:
        self._reads.append(bytes(data))
        super().data_received(data)


class _RecordingController(Controller):
    def __init__(self, handler: Any, *, reads: list[bytes], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._reads = reads

    def factory(self) -> SMTP:
        return _RecordingSMTP(self.handler, reads=self._reads, **self.SMTP_kwargs)


@dataclass
class PipeliningSink(Sink):
    """The recording sink, advertising PIPELINING unless told not to; MAIL can be refused."""

    pipelining: bool = True
    reads: list[bytes] = field(default_factory=list)  # every read of the server, in order

    def start(self) -> PipeliningSink:
        self._controller = _RecordingController(
            self, reads=self.reads, hostname="127.0.0.1", port=self.port, **self.options
        )
        self._controller.start()
        return self

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")  # before the final "250 HELP"
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self._scripted("MAIL")
        if reply is not None:
            return reply  # MAIL FROM stays unset: aiosmtpd answers 503 to what follows
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    def envelope_reads(self) -> list[bytes]:
        """The reads that carried a MAIL command."""
        return [read for read in self.reads if b"MAIL FROM:" in read]


def envelope_bytes(envelope: Envelope, parameters: str = "") -> bytes:
    """What a pipelining client writes in one go for ``envelope``."""
    lines = [f"MAIL FROM:<{envelope.sender}>{parameters}"]
    lines += [f"RCPT TO:<{recipient}>" for recipient in envelope.recipients]
    return "".join(f"{line}\r\n" for line in [*lines, "DATA"]).encode()


@pytest.fixture
def make_sink() -> Iterator[Callable[..., PipeliningSink]]:
    sinks: list[PipeliningSink] = []

    def make(**fields: Any) -> PipeliningSink:
        sink = PipeliningSink(**fields).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def sink(make_sink: Callable[..., PipeliningSink]) -> PipeliningSink:
    return make_sink()


@pytest.fixture
def transport(
    sink: PipeliningSink, make_transport: Callable[[str], SmtpTransport]
) -> SmtpTransport:
    return make_transport(smtp_url(sink))


class TestPipelinedSmtpTransport(smtp_tests.TestSmtpTransport):
    """The whole transport contract, over plain, STARTTLS and TLS, with PIPELINING offered."""

    @pytest.fixture
    def sink(self, make_sink: Callable[..., PipeliningSink], security: str, tls: Tls) -> Sink:
        return make_sink(options=server_options(security, tls))

    def test_the_envelope_went_out_pipelined(
        self, sink: PipeliningSink, transport: SmtpTransport
    ) -> None:
        envelopes = [make_envelope(bcc=["hidden@example.test"]) for _ in range(2)]

        for envelope in envelopes:
            transport.send(envelope)

        assert sink.envelope_reads() == [envelope_bytes(e) for e in envelopes]


# --- the wire ---------------------------------------------------------------------------------


def test_mail_every_rcpt_and_data_arrive_in_one_read(
    sink: PipeliningSink, transport: SmtpTransport
) -> None:
    envelope = make_envelope(bcc=["hidden@example.test", "also-hidden@example.test"])

    result = transport.send(envelope)

    assert result.code == 250
    assert sink.envelope_reads() == [envelope_bytes(envelope)]
    [received] = sink.received
    assert received.rcpt_tos == envelope.recipients
    assert received.data == envelope.data


def test_a_message_costs_two_round_trips_instead_of_three_plus_one_per_recipient(
    make_sink: Callable[..., PipeliningSink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    reads_per_message = {}
    for pipelining in (True, False):
        sink = make_sink(pipelining=pipelining)
        transport = make_transport(smtp_url(sink))
        transport.send(make_envelope())  # EHLO and the first message
        before = len(sink.reads)

        transport.send(make_envelope())

        assert len(sink.received) == 2
        reads_per_message[pipelining] = len(sink.reads) - before
    recipients = len(make_envelope().recipients)
    # the message's bytes arrive in one read here; the client waits for a reply after each
    assert reads_per_message == {True: 2, False: 3 + recipients}


def test_a_long_recipient_list_is_pipelined_in_groups_that_fit_a_tcp_window(
    sink: PipeliningSink, transport: SmtpTransport
) -> None:
    # RFC 2920 3.1: with blocking writes, each group must fit in the window or both sides can
    # block writing; 600 recipients make ~17 KB of commands
    envelope = replace(make_envelope(), recipients=[f"r{i:04d}@example.test" for i in range(600)])

    result = transport.send(envelope)

    assert result.code == 250
    first = sink.reads.index(sink.envelope_reads()[0])
    groups = sink.reads[first : first + 3]
    assert b"".join(groups) == envelope_bytes(envelope)
    assert all(len(group) <= 8192 and group.endswith(b"\r\n") for group in groups)
    assert sink.received[0].rcpt_tos == envelope.recipients


def test_without_pipelining_advertised_each_command_waits_for_its_reply(
    make_sink: Callable[..., PipeliningSink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(pipelining=False)
    transport = make_transport(smtp_url(sink))
    envelope = make_envelope()

    result = transport.send(envelope)

    assert result.code == 250
    # smtplib writes its commands in lower case: compare without case
    commands = envelope_bytes(envelope).upper().splitlines(keepends=True)
    assert [read.upper() for read in sink.reads if read.upper() in commands] == commands
    assert sink.received[0].data == envelope.data


def test_smtputf8_parameters_travel_in_the_pipelined_mail_command(
    make_sink: Callable[..., PipeliningSink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(options={"enable_SMTPUTF8": True})
    transport = make_transport(smtp_url(sink))
    envelope = replace(make_envelope(), recipients=["jörg@bücher.example"], smtputf8=True)

    transport.send(envelope)

    assert sink.envelope_reads() == [envelope_bytes(envelope, " SMTPUTF8 BODY=8BITMIME")]
    assert sink.received[0].rcpt_tos == ["jörg@bücher.example"]


def test_smtputf8_not_offered_fails_permanently_before_anything_is_written(
    make_sink: Callable[..., PipeliningSink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(options={"enable_SMTPUTF8": False})
    transport = make_transport(smtp_url(sink))
    envelope = replace(make_envelope(), recipients=["jörg@bücher.example"], smtputf8=True)

    with pytest.raises(PermanentFailure, match="SMTPUTF8"):
        transport.send(envelope)
    transport.send(make_envelope())

    assert len(sink.envelope_reads()) == 1
    assert len(sink.received) == 1
    assert sink.connections == 1


def test_a_line_break_in_an_address_is_refused_before_anything_is_written(
    sink: PipeliningSink, transport: SmtpTransport
) -> None:
    transport.send(make_envelope())
    # smtplib.quoteaddr passes this one through unchanged, line break and all
    smuggled = replace(make_envelope(), recipients=["<>\r\nRCPT TO:<b@example.test>"])

    with pytest.raises(ValueError, match="line break"):
        transport.send(smuggled)
    transport.send(make_envelope())

    assert len(sink.envelope_reads()) == 2
    assert len(sink.received) == 2


# --- refusals, with pipelining ----------------------------------------------------------------


def test_recipients_refused_among_accepted_ones_are_reported(
    sink: PipeliningSink, transport: SmtpTransport
) -> None:
    envelope = make_envelope()
    first, *accepted = envelope.recipients
    sink.refuse("550 5.1.1 no such user", stage="RCPT")

    result = transport.send(envelope)

    assert result.refused == {first: "550 5.1.1 no such user"}
    assert result.code == 250
    assert result.detail == "250 2.0.0 Ok: queued"
    [received] = sink.received
    assert received.rcpt_tos == accepted
    assert sink.envelope_reads() == [envelope_bytes(envelope)]


@pytest.mark.parametrize(
    ("replies", "error", "code"),
    [
        (["550 5.1.1 no such user"] * 3, PermanentFailure, 550),
        (["550 5.1.1 no such user", "450 4.2.1 mailbox busy", "550 5.1.1 no such user"],
         TemporaryFailure, 450),
    ],
)  # fmt: skip
def test_every_recipient_refused_is_judged_by_the_rcpt_replies_and_the_connection_kept(
    sink: PipeliningSink,
    transport: SmtpTransport,
    replies: list[str],
    error: type[Exception],
    code: int,
) -> None:
    # aiosmtpd answers the pipelined DATA with 503; the RCPT replies say what went wrong
    envelope = make_envelope()
    assert len(replies) == len(envelope.recipients)
    for reply in replies:
        sink.refuse(reply, stage="RCPT")

    with pytest.raises(error) as caught:
        transport.send(envelope)
    result = transport.send(envelope)

    assert getattr(caught.value, "code", None) == code
    # the 503 to DATA was read: the next message gets its own replies, not a stale one
    assert result.detail == "250 2.0.0 Ok: queued"
    assert [m.rcpt_tos for m in sink.received] == [envelope.recipients]
    assert sink.connections == 1


@pytest.mark.parametrize(
    ("reply", "error"),
    [("550 5.7.1 sender rejected", PermanentFailure), ("451 4.7.1 try later", TemporaryFailure)],
)
def test_a_refused_mail_command_is_judged_by_its_reply_and_the_transaction_reset(
    sink: PipeliningSink, transport: SmtpTransport, reply: str, error: type[Exception]
) -> None:
    sink.refuse(reply, stage="MAIL")
    envelope = make_envelope()

    with pytest.raises(error) as caught:
        transport.send(envelope)
    result = transport.send(envelope)

    assert str(caught.value) == f"smtp: {reply}"
    assert result.detail == "250 2.0.0 Ok: queued"
    assert [m.message_id for m in sink.received] == [envelope.email["Message-ID"]]
    assert any(read.upper() == b"RSET\r\n" for read in sink.reads)
    assert sink.connections == 1


@pytest.mark.parametrize("stage", ["MAIL", "RCPT"])
def test_421_in_the_envelope_is_temporary_and_the_next_send_reconnects(
    sink: PipeliningSink, transport: SmtpTransport, stage: str
) -> None:
    sink.refuse("421 4.3.2 shutting down", stage=stage)

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())
    transport.send(make_envelope())

    assert caught.value.code == 421
    assert len(sink.received) == 1
    assert sink.connections == 2


def test_a_refusal_after_the_data_is_still_classified(
    sink: PipeliningSink, transport: SmtpTransport
) -> None:
    sink.refuse("550 5.7.1 message content rejected", stage="DATA")

    with pytest.raises(PermanentFailure) as caught:
        transport.send(make_envelope())

    assert caught.value.code == 550
    assert sink.received == []


# --- connections: retry and the "assumed delivered" rule --------------------------------------


def test_a_kept_connection_the_server_dropped_is_reopened_and_the_message_sent_once(
    sink: PipeliningSink, transport: SmtpTransport
) -> None:
    transport.send(make_envelope())
    sink.drop_connections()
    envelope = make_envelope()

    result = transport.send(envelope)

    assert result.code == 250
    assert sink.message_ids()[envelope.email["Message-ID"]] == 1
    assert sink.connections == 2


def test_a_hang_up_after_the_whole_message_is_assumed_delivered_once(
    make_sink: Callable[..., PipeliningSink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(hang_up_after_data=True)
    transport = make_transport(smtp_url(sink))
    envelope = make_envelope()

    result = transport.send(envelope)

    assert "assumed delivered" in result.detail
    assert result.code is None
    assert sink.message_ids()[envelope.email["Message-ID"]] == 1
    assert len(sink.envelope_reads()) == 1


# --- a scripted server, for replies aiosmtpd will not give ------------------------------------


# scripted as a reply: the server closes the connection instead of answering
HANG_UP = "(hang up)"


@dataclass
class ScriptedServer:
    """A minimal SMTP server on a raw asyncio socket; ``script`` sets the next replies.

    Unscripted commands get the usual answers: 354 to DATA only after a MAIL and at least one
    RCPT were accepted (554 otherwise), 250 to the rest. A 421 reply closes the connection.
    """

    pipelining: bool = True
    reads: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)  # data as received, dot-stuffed
    connections: int = 0
    _script: dict[str, list[str]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    port: int = 0

    def script(self, verb: str, *replies: str) -> None:
        self._script.setdefault(verb, []).extend(replies)

    def start(self) -> ScriptedServer:
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self._loop.close()

    def _reply(self, verb: str, default: str) -> str:
        queued = self._script.get(verb)
        return queued.pop(0) if queued else default

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 scripted.test ESMTP\r\n")
        pending, data, state = b"", None, {"mail": False, "rcpts": 0}
        while chunk := await reader.read(65536):
            self.reads.append(chunk)
            pending += chunk
            while True:
                if data is not None:  # in the data phase, until a line holding a lone "."
                    end = (b"\r\n" + pending).find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.messages.append(pending[:end])
                    pending, data = pending[end + 3 :], None
                    reply = self._reply("END", "250 2.0.0 queued")
                    if reply == HANG_UP:  # close without a reply, the data kept or not
                        writer.close()
                        return
                    writer.write(reply.encode() + b"\r\n")
                    if reply.startswith("421"):  # what was pipelined behind the data is unread
                        await writer.drain()
                        writer.close()
                        return
                    state.update(mail=False, rcpts=0)
                    continue
                line, crlf, rest = pending.partition(b"\r\n")
                if not crlf:
                    break
                pending = rest
                reply = self._answer(line.decode("utf-8").upper(), state)
                writer.write(reply.encode() + b"\r\n")
                if reply.startswith("354"):
                    data = b""
                if reply.startswith(("421", "221")):
                    await writer.drain()
                    writer.close()
                    return
            await writer.drain()
        writer.close()

    def _answer(self, line: str, state: dict[str, Any]) -> str:
        verb = line[:4]
        if verb == "EHLO":
            return (
                "250-scripted.test\r\n"
                + ("250-PIPELINING\r\n" if self.pipelining else "")
                + ("250 8BITMIME")
            )
        if verb == "MAIL":
            reply = self._reply("MAIL", "250 2.1.0 ok")
            state["mail"] = reply.startswith("250")
        elif verb == "RCPT":
            reply = self._reply("RCPT", "250 2.1.5 ok" if state["mail"] else "503 5.5.1 no MAIL")
            state["rcpts"] += reply.startswith("250")
        elif verb == "DATA":
            valid = state["mail"] and state["rcpts"]
            reply = self._reply(
                "DATA", "354 go ahead" if valid else "554 5.5.1 no valid recipients"
            )
        elif verb == "RSET":
            state.update(mail=False, rcpts=0)
            reply = "250 2.0.0 ok"
        elif verb == "QUIT":
            reply = "221 2.0.0 bye"
        else:
            reply = "250 2.0.0 ok"
        return reply

    def envelope_reads(self) -> list[bytes]:
        return [read for read in self.reads if read.startswith(b"MAIL FROM:")]


@pytest.fixture
def make_scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(**fields: Any) -> ScriptedServer:
        server = ScriptedServer(**fields).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def scripted(make_scripted: Callable[..., ScriptedServer]) -> ScriptedServer:
    return make_scripted()


@pytest.fixture
def scripted_transport(
    scripted: ScriptedServer, make_transport: Callable[[str], SmtpTransport]
) -> SmtpTransport:
    return make_transport(f"smtp://127.0.0.1:{scripted.port}?timeout=5")


def test_the_raw_server_sees_the_envelope_in_one_segment_then_the_message(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    envelopes = [make_envelope() for _ in range(2)]

    for envelope in envelopes:
        scripted_transport.send(envelope)

    # after EHLO, each message is exactly two reads: the envelope, then the data and its "."
    assert scripted.reads[1:] == [
        chunk for e in envelopes for chunk in (envelope_bytes(e), e.data + b".\r\n")
    ]
    assert scripted.messages == [e.data for e in envelopes]


def test_a_refused_data_command_is_judged_by_its_reply_and_the_transaction_reset(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    scripted.script("DATA", "451 4.3.0 queue full")
    envelope = make_envelope()

    with pytest.raises(TemporaryFailure) as caught:
        scripted_transport.send(envelope)
    result = scripted_transport.send(envelope)

    assert caught.value.code == 451
    assert caught.value.detail == "451 4.3.0 queue full"
    assert result.detail == "250 2.0.0 queued"
    assert b"RSET\r\n" in [read.upper() for read in scripted.reads]
    assert scripted.messages == [envelope.data]
    assert scripted.connections == 1


def test_data_answered_554_after_every_recipient_was_refused_reports_the_rcpt_refusal(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    envelope = make_envelope()
    scripted.script("RCPT", *["550 5.1.1 no such user"] * len(envelope.recipients))

    with pytest.raises(PermanentFailure) as caught:
        scripted_transport.send(envelope)
    scripted_transport.send(envelope)

    assert caught.value.code == 550  # the reason, not DATA's "554 no valid recipients"
    assert scripted.messages == [envelope.data]


def test_a_354_after_every_recipient_was_refused_gets_a_lone_dot_not_the_message(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    envelope = make_envelope()
    scripted.script("RCPT", *["550 5.1.1 no such user"] * len(envelope.recipients))
    scripted.script("DATA", "354 go ahead anyway")
    scripted.script("END", "554 5.5.1 no valid recipients")

    with pytest.raises(PermanentFailure) as caught:
        scripted_transport.send(envelope)
    result = scripted_transport.send(envelope)

    assert caught.value.code == 550
    assert scripted.messages == [b"", envelope.data]  # the empty data phase, then the message
    assert result.code == 250
    assert scripted.connections == 1


def test_a_hang_up_on_the_lone_dot_after_every_recipient_was_refused_keeps_the_refusal(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    envelope = make_envelope()
    scripted.script("RCPT", *["550 5.1.1 no such user"] * len(envelope.recipients))
    scripted.script("DATA", "354 go ahead anyway")
    scripted.script("END", HANG_UP)

    with pytest.raises(PermanentFailure) as caught:
        scripted_transport.send(envelope)
    result = scripted_transport.send(envelope)

    assert caught.value.code == 550  # the refusal, not "server closed the connection"
    assert result.code == 250
    assert scripted.messages == [b"", envelope.data]
    assert scripted.connections == 2  # the next message went over a new connection


@pytest.mark.parametrize("verb", ["MAIL", "RCPT", "DATA"])
def test_a_421_that_closes_the_connection_is_temporary_and_nothing_more_is_read(
    scripted: ScriptedServer, scripted_transport: SmtpTransport, verb: str
) -> None:
    scripted.script(verb, "421 4.4.2 closing")

    with pytest.raises(TemporaryFailure) as caught:
        scripted_transport.send(make_envelope())
    result = scripted_transport.send(make_envelope())

    assert caught.value.code == 421
    assert result.code == 250
    assert len(scripted.messages) == 1
    assert scripted.connections == 2


def test_a_server_that_hangs_up_on_the_envelope_of_a_new_connection_is_not_retried(
    scripted: ScriptedServer, scripted_transport: SmtpTransport
) -> None:
    # a closed connection without a 421: only a kept connection earns a retry
    scripted.script("MAIL", "221 2.0.0 going away")

    with pytest.raises(TemporaryFailure, match="server closed the connection"):
        scripted_transport.send(make_envelope())

    assert scripted.connections == 1
    assert scripted.messages == []


def test_without_pipelining_the_raw_server_gets_one_command_per_read(
    make_scripted: Callable[..., ScriptedServer], make_transport: Callable[[str], SmtpTransport]
) -> None:
    scripted = make_scripted(pipelining=False)
    transport = make_transport(f"smtp://127.0.0.1:{scripted.port}?timeout=5")
    envelope = make_envelope()

    transport.send(envelope)

    commands = envelope_bytes(envelope).splitlines(keepends=True)
    assert [read.upper() for read in scripted.reads[1:-1]] == [c.upper() for c in commands]
    assert scripted.messages == [envelope.data]


# --- throughput (printed, not asserted: timings belong in bench/) -----------------------------


def _smtp_sink_binary() -> tuple[Path, dict[str, str]] | None:
    installed = Path("/usr/sbin/smtp-sink")
    if installed.exists():
        return installed, {}
    cache = REPO / "bench" / ".cache" / "postfix" / "usr"  # scripts/install-smtp-sink puts it
    if (cache / "sbin" / "smtp-sink").exists():
        return cache / "sbin" / "smtp-sink", {"LD_LIBRARY_PATH": str(cache / "lib" / "postfix")}
    return None


@pytest.fixture
def fast_sink(make_sink: Callable[..., PipeliningSink]) -> Iterator[Callable[[bool], int]]:
    """Factory: the port of a fast local sink, advertising PIPELINING or not."""
    found = _smtp_sink_binary()
    processes: list[subprocess.Popen[bytes]] = []

    def start(pipelining: bool) -> int:
        if found is None:
            return make_sink(pipelining=pipelining).port
        binary, env = found
        port = free_port()
        argv = [str(binary)]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink will not keep running as root
        if not pipelining:
            argv.append("-p")  # do not announce PIPELINING
        argv += [f"127.0.0.1:{port}", "100"]
        processes.append(
            subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        )
        wait_for_port(port)
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def test_print_throughput_with_and_without_pipelining(
    fast_sink: Callable[[bool], int], capsys: pytest.CaptureFixture[str]
) -> None:
    text = "".join(
        f"Line {i:03d} of a five kilobyte message, " + "x" * 33 + "\n" for i in range(63)
    )
    envelopes = [make_envelope(text=text, html=None) for _ in range(2000)]
    size = len(envelopes[0].data)
    assert 4800 < size < 5600
    sink_name = "smtp-sink" if _smtp_sink_binary() else "aiosmtpd"
    lines = []
    for recipients in (1, 3):
        batch = [replace(e, recipients=e.recipients[:recipients]) for e in envelopes]
        rates = {}
        for pipelining in (False, True):
            port = fast_sink(pipelining)
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as probe:
                probe.ehlo()
                assert probe.has_extn("pipelining") == pipelining
            transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port))
            try:
                transport.send(batch[0])  # connect outside the timing
                started = time.perf_counter()
                codes = {transport.send(envelope).code for envelope in batch}
                rates[pipelining] = len(batch) / (time.perf_counter() - started)
            finally:
                transport.close()
            assert codes == {250}
        lines.append(
            f"{recipients} recipient(s): {rates[False]:,.0f} msgs/s step by step, "
            f"{rates[True]:,.0f} msgs/s pipelined (x{rates[True] / rates[False]:.2f})"
        )
    with capsys.disabled():
        print(f"\n{len(envelopes)} prebuilt {size:,}-byte messages to {sink_name}, one connection:")
        print("\n".join(f"  {line}" for line in lines))
