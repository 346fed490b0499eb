"""smtp:// against real aiosmtpd servers on free loopback ports: plain, STARTTLS, implicit TLS."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.policy import SMTP, default
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from postroom.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentFailure,
    TemporaryFailure,
)
from postroom.transports import create_transport
from postroom.transports.base import SendResult, send_each
from postroom.transports.smtp import SmtpConfig, SmtpTransport
from tests.servers import SmtpSink, free_port, unavailable
from tests.transports.contract import Delivery, TransportContract, make_envelope

USERNAME = "mailer"
PASSWORD = "c0rrect-h0rse-b4ttery"
WRONG_PASSWORD = "Wr0ng-s3cret-pa55"


@dataclass(frozen=True)
class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost signed by it."""

    ca_file: Path
    server_context: ssl.SSLContext


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    if shutil.which("openssl") is None:
        unavailable("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=postroom test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
        cwd=folder,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return Tls(ca_file=folder / "ca.pem", server_context=context)


@dataclass
class Sink(SmtpSink):
    """The recording SMTP sink, configurable and watching its connections."""

    options: dict[str, Any] = field(default_factory=dict)  # passed on to aiosmtpd's Controller
    auth: bool = False  # require AUTH (offered over TLS only), checked by ``authenticate``
    hang_up_after_data: bool = False  # keep the message, then close without a reply
    peers: list[tuple[str, int]] = field(default_factory=list)  # per received message
    encrypted: list[bool] = field(default_factory=list)  # per received message
    logins: list[tuple[str, bytes]] = field(default_factory=list)  # (mechanism, user) accepted
    _servers: list[Any] = field(default_factory=list)

    def start(self) -> Sink:
        options = dict(self.options)
        if self.auth:
            options.update(auth_required=True, authenticator=self.authenticate)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)
        self._controller.start()
        return self

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # this hook takes over aiosmtpd's own bookkeeping
        if server not in self._servers:  # STARTTLS sends a second EHLO on the same connection
            self._servers.append(server)
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        count = len(self.received)
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.received) > count:
            self.peers.append(session.peer)
            self.encrypted.append(server.transport.get_extra_info("ssl_object") is not None)
        if self.hang_up_after_data:
            server.transport.close()
        return reply

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        if (auth_data.login, auth_data.password) == (USERNAME.encode(), PASSWORD.encode()):
            self.logins.append((mechanism, auth_data.login))
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    @property
    def connections(self) -> int:
        """How many SMTP sessions greeted this server (EHLO counted once per connection)."""
        return len(self._servers)

    def drop_connections(self) -> None:
        """Close every client connection from the server side, as an idle timeout would."""
        assert self._controller is not None
        for server in self._servers:
            if server.transport is not None:
                self._controller.loop.call_soon_threadsafe(server.transport.close)
        self.wait_until_disconnected()

    def wait_until_disconnected(self, *, timeout: float = 5.0) -> None:
        """Block until no client is connected; fail if one still is after ``timeout``."""
        deadline = time.monotonic() + timeout
        while any(server.transport is not None for server in self._servers):
            assert time.monotonic() < deadline, "a connection is still open"
            time.sleep(0.01)


def smtp_url(sink: Sink, security: str = "none", *, tls: Tls | None = None, **options: str) -> str:
    query = {"security": security, "timeout": "5", **options}
    if tls is not None:
        query["ca_file"] = str(tls.ca_file)
    return f"smtp://127.0.0.1:{sink.port}?" + "&".join(
        f"{key}={quote(value)}" for key, value in query.items()
    )


@pytest.fixture
def make_sink() -> Iterator[Callable[..., Sink]]:
    sinks: list[Sink] = []

    def make(**fields: Any) -> Sink:
        sink = Sink(**fields).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def sink(make_sink: Callable[..., Sink]) -> Sink:
    """A plain SMTP server."""
    return make_sink()


@pytest.fixture
def transport(sink: Sink, make_transport: Callable[[str], SmtpTransport]) -> SmtpTransport:
    """A transport to the plain ``sink``."""
    return make_transport(smtp_url(sink))


def server_options(security: str, tls: Tls) -> dict[str, Any]:
    if security == "starttls":
        return {"tls_context": tls.server_context, "require_starttls": True}
    if security == "ssl":
        return {"ssl_context": tls.server_context}
    return {}


class TestSmtpTransport(TransportContract):
    """The contract holds over a plain connection, STARTTLS and implicit TLS alike."""

    @pytest.fixture(params=["none", "starttls", "ssl"])
    def security(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def sink(self, make_sink: Callable[..., Sink], security: str, tls: Tls) -> Sink:
        return make_sink(options=server_options(security, tls))

    @pytest.fixture
    def transport(
        self, sink: Sink, security: str, tls: Tls, make_transport: Callable[[str], SmtpTransport]
    ) -> SmtpTransport:
        return make_transport(smtp_url(sink, security, tls=tls))

    @pytest.fixture
    def delivered(self, sink: Sink) -> Callable[[], list[Delivery]]:
        return lambda: [Delivery(m.data, tuple(m.rcpt_tos)) for m in sink.received]

    def test_every_message_travels_encrypted_when_asked(
        self, sink: Sink, security: str, transport: SmtpTransport
    ) -> None:
        for _ in range(2):
            transport.send(make_envelope())

        assert sink.encrypted == [security != "none"] * 2
        assert sink.connections == 1


# --- the wire: bytes, line endings, envelope ------------------------------------------------


def test_the_server_receives_exactly_the_message_bytes(
    sink: Sink, transport: SmtpTransport
) -> None:
    envelope = make_envelope(text=".leading dot\n.\n..\n", html=None)

    result = transport.send(envelope)

    [received] = sink.received
    assert received.data == envelope.data
    assert received.mail_from == envelope.sender
    assert received.rcpt_tos == envelope.recipients
    assert result.code == 250
    assert result.detail == "250 2.0.0 Ok: queued"


def test_every_line_on_the_wire_ends_with_crlf(sink: Sink, transport: SmtpTransport) -> None:
    # a message built with the default policy serialises with bare LF; SMTP requires CRLF
    envelopes = [make_envelope(policy=policy) for policy in (SMTP, default)]

    for envelope in envelopes:
        transport.send(envelope)

    for received in sink.received:
        assert received.data.endswith(b"\r\n")
        assert received.data.count(b"\n") == received.data.count(b"\r\n")
        assert b"\r\r" not in received.data
    assert [received.data for received in sink.received] == [
        envelope.data for envelope in envelopes
    ]


def test_a_body_without_a_final_line_break_still_ends_data_correctly(
    sink: Sink, transport: SmtpTransport
) -> None:
    headers_only = make_envelope(text=None, html=None)
    envelope = replace(headers_only, data=headers_only.data + b"last line without a break")

    transport.send(envelope)
    transport.send(headers_only)

    assert [received.data for received in sink.received] == [
        envelope.data + b"\r\n",
        headers_only.data,
    ]


# --- connections: reuse, recovery ------------------------------------------------------------


def test_many_sends_share_one_connection(sink: Sink, transport: SmtpTransport) -> None:
    for _ in range(10):
        transport.send(make_envelope())

    assert len(sink.received) == 10
    assert sink.connections == 1
    assert len(set(sink.peers)) == 1


def test_a_kept_connection_the_server_dropped_is_reopened_and_the_message_sent_once(
    sink: Sink, transport: SmtpTransport
) -> None:
    transport.send(make_envelope())
    sink.drop_connections()
    envelope = make_envelope()

    result = transport.send(envelope)

    assert result.code == 250
    assert sink.message_ids()[envelope.email["Message-ID"]] == 1
    assert len(sink.received) == 2
    assert sink.connections == 2


def test_an_idle_connection_is_checked_with_noop_and_replaced_when_dead(
    sink: Sink,
) -> None:
    transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=sink.port, idle_check_seconds=0))
    try:
        transport.send(make_envelope())
        sink.drop_connections()
        envelope = make_envelope()

        transport.send(envelope)
        transport.send(make_envelope())  # NOOP on a live connection keeps it
    finally:
        transport.close()

    assert sink.message_ids()[envelope.email["Message-ID"]] == 1
    assert len(sink.received) == 3
    assert sink.connections == 2


def test_a_server_restart_between_sends_loses_nothing(make_sink: Callable[..., Sink]) -> None:
    sink = make_sink()
    transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=sink.port))
    try:
        transport.send(make_envelope())
        sink.drop_connections()
        sink.stop()
        restarted = make_sink(port=sink.port)
        envelope = make_envelope()

        transport.send(envelope)
    finally:
        transport.close()

    assert [m.message_id for m in restarted.received] == [envelope.email["Message-ID"]]


def test_connect_opens_the_connection_the_next_sends_use(
    sink: Sink, transport: SmtpTransport
) -> None:
    assert transport.connect()  # opened one
    assert sink.connections == 1
    assert not transport.connect()  # kept: nothing new opened
    for _ in range(2):
        transport.send(make_envelope())
    [(_, outcome)] = send_each(transport, [make_envelope()])
    assert isinstance(outcome, SendResult)
    assert outcome.code == 250

    assert len(sink.received) == 3
    assert sink.connections == 1


def test_a_failed_connect_is_reported_by_the_next_send_without_a_second_attempt(
    make_sink: Callable[..., Sink],
) -> None:
    port = free_port()  # nothing listens yet
    transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, timeout_seconds=5))
    try:
        with pytest.raises(TemporaryFailure):
            transport.connect()
        sink = make_sink(port=port)  # a second attempt would now succeed

        outcomes = [outcome for _, outcome in send_each(transport, [make_envelope()] * 2)]

        assert all(isinstance(outcome, TemporaryFailure) for outcome in outcomes)
        assert sink.connections == 0
        assert transport.send(make_envelope()).code == 250  # the failure was reported once
    finally:
        transport.close()
    assert sink.connections == 1


def test_close_says_quit_and_the_next_send_reconnects(sink: Sink, transport: SmtpTransport) -> None:
    transport.send(make_envelope())
    transport.close()
    transport.send(make_envelope())

    assert len(sink.received) == 2
    assert sink.connections == 2


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "stage"),
    [
        ("421 4.3.2 shutting down", "RCPT"),
        ("451 4.3.0 try again later", "DATA"),
        ("452 4.5.3 too many recipients", "RCPT"),
        ("421 4.4.2 closing", "DATA"),
    ],
)
def test_4xx_replies_are_temporary_failures_with_their_code(
    sink: Sink, transport: SmtpTransport, reply: str, stage: str
) -> None:
    sink.refuse(reply, stage=stage, times=len(make_envelope().recipients))

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())

    assert caught.value.code == int(reply[:3])
    assert caught.value.detail == reply
    assert sink.received == []


def test_the_connection_still_works_after_a_refusal(sink: Sink, transport: SmtpTransport) -> None:
    envelope = make_envelope()
    sink.refuse("452 4.5.3 mailbox busy", stage="RCPT", times=len(envelope.recipients))
    with pytest.raises(TemporaryFailure):
        transport.send(envelope)

    transport.send(envelope)

    assert [m.message_id for m in sink.received] == [envelope.email["Message-ID"]]
    assert sink.received[0].rcpt_tos == envelope.recipients
    assert sink.connections == 1


def test_after_421_the_next_send_uses_a_new_connection(
    sink: Sink, transport: SmtpTransport
) -> None:
    sink.refuse("421 4.3.2 shutting down", stage="DATA")
    with pytest.raises(TemporaryFailure):
        transport.send(make_envelope())

    transport.send(make_envelope())

    assert len(sink.received) == 1
    assert sink.connections == 2


def test_550_after_data_is_a_permanent_failure(sink: Sink, transport: SmtpTransport) -> None:
    sink.refuse("550 5.7.1 message content rejected", stage="DATA")

    with pytest.raises(PermanentFailure) as caught:
        transport.send(make_envelope())

    assert caught.value.code == 550
    assert caught.value.detail == "550 5.7.1 message content rejected"
    assert sink.received == []


def test_every_recipient_refused_with_550_is_a_permanent_failure(
    sink: Sink, transport: SmtpTransport
) -> None:
    envelope = make_envelope()
    sink.refuse("550 5.1.1 no such user", stage="RCPT", times=len(envelope.recipients))

    with pytest.raises(PermanentFailure) as caught:
        transport.send(envelope)

    assert caught.value.code == 550
    assert sink.received == []


def test_every_recipient_refused_with_one_refusal_temporary_is_a_temporary_failure(
    sink: Sink, transport: SmtpTransport
) -> None:
    envelope = make_envelope()
    sink.refuse("550 5.1.1 no such user", stage="RCPT", times=len(envelope.recipients) - 1)
    sink.refuse("450 4.2.1 mailbox busy", stage="RCPT")

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(envelope)

    assert caught.value.code == 450


def test_recipients_refused_among_accepted_ones_are_reported(
    sink: Sink, transport: SmtpTransport
) -> None:
    envelope = make_envelope()
    first, *accepted = envelope.recipients
    sink.refuse("550 5.1.1 no such user", stage="RCPT")

    result = transport.send(envelope)

    assert result.refused == {first: "550 5.1.1 no such user"}
    assert result.code == 250
    [received] = sink.received
    assert received.rcpt_tos == accepted


# --- authentication ---------------------------------------------------------------------------


@pytest.fixture
def make_auth_sink(make_sink: Callable[..., Sink], tls: Tls) -> Callable[[str], Sink]:
    """A STARTTLS server that asks for a login and offers one SASL mechanism."""

    def make(mechanism: str) -> Sink:
        excluded = [m for m in ("LOGIN", "PLAIN") if m != mechanism]
        options = {**server_options("starttls", tls), "auth_exclude_mechanism": excluded}
        return make_sink(auth=True, options=options)

    return make


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_login_with_the_right_password_sends(
    make_auth_sink: Callable[[str], Sink],
    make_transport: Callable[[str], SmtpTransport],
    tls: Tls,
    mechanism: str,
) -> None:
    sink = make_auth_sink(mechanism)
    transport = make_transport(
        f"smtp://{USERNAME}:{quote(PASSWORD)}@127.0.0.1:{sink.port}?ca_file={quote(str(tls.ca_file))}"
    )

    transport.send(make_envelope())
    transport.send(make_envelope())

    assert transport.config.security == "starttls"  # credentials imply STARTTLS
    assert sink.logins == [(mechanism, USERNAME.encode())]
    assert len(sink.received) == 2
    assert sink.encrypted == [True, True]


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_login_with_a_wrong_password_fails_without_revealing_it(
    make_auth_sink: Callable[[str], Sink],
    make_transport: Callable[[str], SmtpTransport],
    tls: Tls,
    mechanism: str,
) -> None:
    sink = make_auth_sink(mechanism)
    transport = make_transport(
        f"smtp://{USERNAME}:{WRONG_PASSWORD}@127.0.0.1:{sink.port}"
        f"?security=starttls&ca_file={quote(str(tls.ca_file))}"
    )

    # temporary: the configuration is at fault, not the message, so messages wait for a fix
    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())

    assert caught.value.code == 535
    for text in (str(caught.value), repr(caught.value), caught.value.detail, *caught.value.args):
        assert WRONG_PASSWORD not in text
    assert WRONG_PASSWORD not in repr(transport.config)
    assert sink.logins == []
    assert sink.received == []
    sink.wait_until_disconnected()  # the refused session was closed, not left open


def test_a_server_that_offers_no_auth_gets_neither_credentials_nor_the_message(
    make_sink: Callable[..., Sink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(auth=True)  # without TLS, aiosmtpd does not offer AUTH
    transport = make_transport(
        f"smtp://{USERNAME}:{PASSWORD}@127.0.0.1:{sink.port}?security=none&timeout=5"
    )

    with pytest.raises(DeliveryError) as caught:
        transport.send(make_envelope())

    assert PASSWORD not in str(caught.value)
    assert sink.logins == []
    assert sink.received == []


# --- TLS --------------------------------------------------------------------------------------


def test_an_untrusted_certificate_is_refused(
    make_sink: Callable[..., Sink],
    make_transport: Callable[[str], SmtpTransport],
    tls: Tls,
) -> None:
    # without ca_file only the system's CAs are trusted, and they did not sign the test CA
    sink = make_sink(options=server_options("starttls", tls))
    transport = make_transport(smtp_url(sink, "starttls"))

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())

    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.detail
    assert sink.received == []
    sink.wait_until_disconnected()


def test_implicit_tls_to_an_untrusted_certificate_is_refused(
    make_sink: Callable[..., Sink],
    make_transport: Callable[[str], SmtpTransport],
    tls: Tls,
) -> None:
    sink = make_sink(options=server_options("ssl", tls))
    transport = make_transport(smtp_url(sink, "ssl"))

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())

    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.detail
    assert sink.received == []


def test_starttls_asked_for_but_not_offered_sends_nothing(
    sink: Sink, make_transport: Callable[[str], SmtpTransport], tls: Tls
) -> None:
    transport = make_transport(smtp_url(sink, "starttls", tls=tls))

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())

    assert "STARTTLS" in caught.value.detail
    assert sink.received == []
    assert sink.connections == 1
    sink.wait_until_disconnected()


def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        create_transport(f"smtp://127.0.0.1:25?security=starttls&ca_file={tmp_path}/nope.pem")


# --- broken servers ---------------------------------------------------------------------------


def test_nothing_listening_is_a_temporary_failure(
    make_transport: Callable[[str], SmtpTransport],
) -> None:
    transport = make_transport(f"smtp://127.0.0.1:{free_port()}?timeout=5")

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())

    assert "ConnectionRefusedError" in caught.value.detail


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts TCP connections (in the backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def test_a_server_that_never_answers_times_out_as_a_temporary_failure(
    silent_port: int, make_transport: Callable[[str], SmtpTransport]
) -> None:
    transport = make_transport(f"smtp://127.0.0.1:{silent_port}?timeout=0.5")

    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_envelope())

    assert "timed out" in caught.value.detail


def test_a_server_that_stops_answering_after_the_greeting_times_out(
    make_transport: Callable[[str], SmtpTransport],
) -> None:
    # greets, then swallows every command: the EHLO reply never comes
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        accepted: list[socket.socket] = []

        def greet() -> None:
            connection, _ = listener.accept()
            accepted.append(connection)
            connection.sendall(b"220 silent.test ESMTP\r\n")

        thread = threading.Thread(target=greet)
        thread.start()
        transport = make_transport(f"smtp://127.0.0.1:{listener.getsockname()[1]}?timeout=0.5")

        with pytest.raises(TemporaryFailure) as caught:
            transport.send(make_envelope())
        thread.join()
        for connection in accepted:
            connection.close()

    assert "timed out" in caught.value.detail


def test_a_hang_up_after_the_whole_message_is_assumed_delivered_once(
    make_sink: Callable[..., Sink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(hang_up_after_data=True)
    transport = make_transport(smtp_url(sink))
    envelope = make_envelope()

    result = transport.send(envelope)

    assert "assumed delivered" in result.detail
    assert result.code is None
    assert sink.message_ids()[envelope.email["Message-ID"]] == 1
    assert len(sink.received) == 1


def test_after_a_hang_up_the_next_message_goes_over_a_new_connection(
    make_sink: Callable[..., Sink], make_transport: Callable[[str], SmtpTransport]
) -> None:
    sink = make_sink(hang_up_after_data=True)
    transport = make_transport(smtp_url(sink))
    transport.send(make_envelope())
    sink.hang_up_after_data = False

    result = transport.send(make_envelope())

    assert result.code == 250
    assert len(sink.received) == 2
    assert sink.connections == 2
