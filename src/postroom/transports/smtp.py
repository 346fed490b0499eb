"""smtp:// — hand messages to an SMTP server over a connection kept open between messages.

Every command is a round trip (60-70 µs between CPUs, more across a network), so when the
server offers PIPELINING (RFC 2920) a message's MAIL, RCPTs and DATA go out in one write:
two round trips per message (envelope, then data) instead of three plus one per recipient.
A batch (``send_each``) also writes each message's data with the next one's envelope: one
round trip per message, spent building the next message.
"""

from __future__ import annotations

import contextlib
import math
import smtplib
import socket
import ssl
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from postroom.errors import ConfigurationError, DeliveryError, PermanentFailure, TemporaryFailure
from postroom.transports.base import Envelope, Handed, SendResult, one_at_a_time

# RFC 2920 §3.1: a client that writes with blocking sockets must make each group of pipelined
# commands fit in the TCP window, or client and server can both block writing to each other.
# 8 KB is under any window in practice and holds MAIL, DATA and ~200 RCPTs.
_PIPELINED_GROUP_BYTES = 8192


class SmtpSecurity(StrEnum):
    """How the connection is protected."""

    NONE = "none"
    STARTTLS = "starttls"
    SSL = "ssl"


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to connect; built from ``smtp://user:pass@host:port?security=…``.

    URL options: ``security`` (``none``, ``starttls``, ``ssl``), ``timeout`` (seconds),
    ``local_hostname`` (sent in EHLO) and ``ca_file`` (a PEM file of CAs to trust instead of
    the system's, for a relay with a private CA; ``smtp://relay:587?ca_file=/etc/relay-ca.pem``).
    """

    host: str
    port: int
    security: SmtpSecurity = SmtpSecurity.NONE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_seconds: float = 10.0
    # A connection idle this long is checked with NOOP before use: servers drop idle clients.
    idle_check_seconds: float = 5.0
    local_hostname: str | None = None
    # PEM file of the CAs to trust instead of the system's, e.g. a private relay's own CA
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """Parse an ``smtp://`` (or ``smtps://``) URL; ``ConfigurationError`` if malformed."""
        try:
            parts = urlsplit(url)
            explicit_port = parts.port
        except ValueError:
            # not the error's own text: it quotes the URL, e.g. a password's unescaped '/' part
            raise ConfigurationError(
                "the SMTP transport URL has a malformed host or port (percent-encode any"
                " '/', '?', '#' or '@' in the user name and password)"
            ) from None
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ConfigurationError("the SMTP transport URL is smtp://[user:pass@]host[:port]")
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        try:
            security = SmtpSecurity(query.pop("security", "") or _default_security(parts))
            timeout = float(query.pop("timeout", 10.0))
            if not 0 < timeout < math.inf:
                raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
            port = explicit_port or {SmtpSecurity.SSL: 465, SmtpSecurity.STARTTLS: 587}.get(
                security, 25
            )
        except ValueError as error:
            raise ConfigurationError(f"bad SMTP transport URL option: {error}") from None
        local_hostname = query.pop("local_hostname", None)
        ca_file = query.pop("ca_file", None)
        if query:
            raise ConfigurationError(
                f"unknown SMTP transport URL options: {', '.join(sorted(query))}"
            )
        return cls(
            host=parts.hostname,
            port=port,
            security=security,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout_seconds=timeout,
            local_hostname=local_hostname,
            ca_file=ca_file,
        )


def _default_security(parts: SplitResult) -> str:
    if parts.scheme == "smtps" or parts.port == 465:
        return SmtpSecurity.SSL
    if parts.username or parts.port == 587:
        # credentials never travel in the clear unless security=none is asked for explicitly
        return SmtpSecurity.STARTTLS
    return SmtpSecurity.NONE


def _tls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    # built once: loading the system's CAs for every new connection costs milliseconds
    if config.security is SmtpSecurity.NONE:
        return None
    try:
        return ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(f"cannot load the SMTP ca_file: {error}") from None


def classify_reply(code: int, reply: bytes | str, *, transport: str) -> DeliveryError:
    """A 4xx reply is temporary, a 5xx permanent; anything else is treated as temporary."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    detail = f"{code} {text}".strip()
    if 500 <= code < 600:
        return PermanentFailure(detail, transport=transport, code=code)
    return TemporaryFailure(detail, transport=transport, code=code)


# A message whose envelope was answered with 354, and the refusals to report once it is sent.
_Waiting = tuple[Envelope, dict[str, str]]


class _ResetNeeded(Exception):
    """The server refused a step; the transaction must be reset before the next message."""

    def __init__(self, error: DeliveryError) -> None:
        self.error = error


class SmtpTransport:
    """Sends over one SMTP connection per transport object, reopened only when it breaks."""

    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._connection: smtplib.SMTP | None = None
        self._last_used = 0.0
        # a failure of connect(), raised again by the next send instead of a second attempt
        self._connect_failure: TemporaryFailure | None = None
        self._local_hostname = config.local_hostname or socket.gethostname()
        self._tls_context = _tls_context(config)

    def send(self, envelope: Envelope) -> SendResult:
        reused = self._connection is not None
        connection = self._ready_connection()
        try:
            return self._transmit(connection, envelope)
        except smtplib.SMTPServerDisconnected:
            self._drop()
            if not reused:
                raise TemporaryFailure(
                    "server closed the connection", transport=self.name
                ) from None
        except (TimeoutError, OSError) as error:
            self._drop()
            raise TemporaryFailure(_describe(error), transport=self.name) from None
        # A kept connection the server had already closed: the message itself was not
        # transmitted (at most the envelope commands, pipelined, that were never answered with
        # 354), so one retry on a fresh connection cannot duplicate it.
        return self._transmit_once_fresh(envelope)

    def send_each(self, envelopes: Iterable[Envelope]) -> Generator[Handed, None, None]:
        """``send`` for many messages, each message's data written with the next envelope.

        RFC 2920 lets message content open a group of pipelined commands, so with PIPELINING
        a message's data, its "." and the next message's MAIL, RCPTs and DATA go out in one
        write, and the next message is built while the server answers: one round trip per
        message instead of two, and the wait overlaps the work. Without PIPELINING each
        message goes through ``send``.

        A message whose envelope was written but that never reached its data (the connection
        broke) is sent again once on a fresh connection, as ``send`` does: nothing of it was
        delivered. One whose data was written in full and then lost its reply is "assumed
        delivered", as in ``send``.
        """
        queue = _Queue(iter(envelopes))
        while (envelope := queue.next()) is not None:
            try:
                connection = self._ready_connection()
            except TemporaryFailure as failure:
                # unreachable: the rest of the batch would each wait for the same timeout
                yield envelope, failure
                while (rest := queue.next()) is not None:
                    yield rest, failure
                return
            if connection.has_extn("pipelining"):
                yield from self._pipelined(connection, envelope, queue)
            else:
                yield from one_at_a_time(self, [envelope])

    def _pipelined(
        self, connection: smtplib.SMTP, first: Envelope, queue: _Queue
    ) -> Iterator[Handed]:
        """Send from ``first`` on over ``connection`` until the queue is empty or it breaks."""
        waiting: _Waiting | None = None  # answered 354; its data goes out with the next write
        opening: Envelope | None = first  # its MAIL, RCPTs and DATA go out in the next write
        unanswered = False  # an envelope went out and its replies were not all read
        try:
            while waiting is not None or opening is not None:
                groups: list[list[bytes]] = [[]]
                if opening is not None:
                    commands = self._opening_commands(connection, opening)
                    if not isinstance(commands, DeliveryError):
                        groups = list(_command_groups(commands))
                    elif waiting is None:
                        yield opening, commands
                        opening = queue.next()
                        continue
                    else:
                        # outcomes in order: the waiting message's data goes out alone first,
                        # and this one is judged again once that message's outcome is out
                        queue.push_front(opening)
                        opening = None
                if not self._write(connection, waiting, groups[0]):
                    # neither the waiting message's data nor the envelope arrived whole
                    cut_off = [e for e in (waiting and waiting[0], opening) if e is not None]
                    waiting = None
                    yield from queue.put_back(cut_off, name=self.name)
                    return
                unanswered = opening is not None
                upcoming = queue.next() if opening is not None else None  # built meanwhile
                if waiting is not None:
                    written, waiting = waiting, None
                    yield written[0], self._data_outcome(connection, written[1])
                if opening is not None:
                    waiting = yield from self._answered(connection, opening, groups, queue)
                    unanswered = False
                if self._connection is None:  # closed by a 421, a hang-up or a failed reset
                    queue.push_front(upcoming)
                    return
                opening = upcoming
            self._last_used = time.monotonic()
        except BaseException:
            # stopped early (the caller closed the generator) or broken with a transaction
            # open on the server: only closing the connection ends it without sending anything
            if unanswered or waiting is not None:
                self._drop()
            raise

    def _write(
        self, connection: smtplib.SMTP, waiting: _Waiting | None, commands: list[bytes]
    ) -> bool:
        """Write the waiting message's data, if any, then ``commands``; False if it broke."""
        head = _data_bytes(waiting[0]) if waiting is not None else b""
        try:
            connection.send(head + b"".join(commands))
        except smtplib.SMTPServerDisconnected:
            self._drop()
            return False
        return True

    def _answered(
        self,
        connection: smtplib.SMTP,
        opening: Envelope,
        groups: list[list[bytes]],
        queue: _Queue,
    ) -> Generator[Handed, None, _Waiting | None]:
        """Read and judge the replies to ``opening``'s envelope; it then waits for its data.

        Returns None when it cannot go on: refused (its error is yielded), or cut off by the
        connection closing first (it is put back in the queue).
        """
        if self._connection is None:  # the reply before these closed the connection
            yield from queue.put_back([opening], name=self.name)
            return None
        try:
            replies = self._read_group_replies(connection, groups)
        except smtplib.SMTPServerDisconnected:
            self._drop()
            yield from queue.put_back([opening], name=self.name)
            return None
        try:
            return opening, self._judge_opening(connection, opening, replies)
        except _ResetNeeded as failure:
            self._reset(connection)
            yield opening, failure.error
            return None

    def _read_group_replies(
        self, connection: smtplib.SMTP, groups: list[list[bytes]]
    ) -> list[tuple[int, bytes]]:
        """The replies to ``groups``, the first one written already, the rest one at a time."""
        replies = self._read_replies(connection, len(groups[0]))
        for group in groups[1:]:
            if replies[-1][0] == 421:
                break
            connection.send(b"".join(group))
            replies += self._read_replies(connection, len(group))
        return replies

    def _opening_commands(
        self, connection: smtplib.SMTP, envelope: Envelope
    ) -> list[bytes] | DeliveryError:
        """``envelope``'s MAIL, RCPTs and DATA, or why it cannot be offered to this server."""
        try:
            return _envelope_commands(envelope, self._mail_options(connection, envelope))
        except _ResetNeeded as refused:
            return refused.error
        except ValueError as error:  # a line break in an address: it can never be sent
            return PermanentFailure(str(error), transport=self.name)

    def _transmit_once_fresh(self, envelope: Envelope) -> SendResult:
        connection = self._ready_connection()
        try:
            return self._transmit(connection, envelope)
        except (smtplib.SMTPServerDisconnected, TimeoutError, OSError) as error:
            self._drop()
            raise TemporaryFailure(_describe(error), transport=self.name) from None

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._connection.quit()
        self._drop()

    def connect(self) -> bool:
        """Open the connection now if none is usable (``ConnectingTransport``).

        A failure is kept for the send that follows, which reports it for each of its messages:
        trying again there would make the batch wait for a second timeout.
        """
        before = self._connection
        try:
            connection = self._ready_connection()
        except TemporaryFailure as failure:
            self._connect_failure = failure
            raise
        return connection is not before

    def _ready_connection(self) -> smtplib.SMTP:
        failure, self._connect_failure = self._connect_failure, None
        if failure is not None:
            raise failure
        if (
            self._connection is not None
            and time.monotonic() - self._last_used > self.config.idle_check_seconds
        ):
            try:
                code, _ = self._connection.noop()
            except (smtplib.SMTPException, OSError):
                code = 0
            if code != 250:
                self._drop()
        if self._connection is None:
            self._connection = self._connect()
            self._last_used = time.monotonic()  # fresh: no NOOP before its first message
        return self._connection

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        connection: smtplib.SMTP | None = None
        try:
            connection = self._open_socket()
            connection.ehlo()
            if config.security is SmtpSecurity.STARTTLS:
                if not connection.has_extn("starttls"):
                    connection.close()
                    raise TemporaryFailure("server does not offer STARTTLS", transport=self.name)
                connection.starttls(context=self._tls_context)
                connection.ehlo()
            if config.username:
                connection.login(config.username, config.password or "")
        except smtplib.SMTPResponseException as error:
            # e.g. a refused login: the connection is open and must not be left to the GC
            _close_quietly(connection)
            # A refusal before any message was offered (bad credentials, a 554 greeting) is the
            # transport's problem, not the message's: retry until the configuration is fixed
            # instead of failing every message permanently.
            reply = error.smtp_error
            text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
            raise TemporaryFailure(
                f"{error.smtp_code} {text}".strip(), transport=self.name, code=error.smtp_code
            ) from None
        except (smtplib.SMTPException, ssl.SSLError, TimeoutError, OSError) as error:
            _close_quietly(connection)
            raise TemporaryFailure(_describe(error), transport=self.name) from None
        return connection

    def _open_socket(self) -> smtplib.SMTP:
        config = self.config
        if config.security is SmtpSecurity.SSL:
            return smtplib.SMTP_SSL(
                config.host,
                config.port,
                local_hostname=self._local_hostname,
                timeout=config.timeout_seconds,
                context=self._tls_context,
            )
        return smtplib.SMTP(
            config.host,
            config.port,
            local_hostname=self._local_hostname,
            timeout=config.timeout_seconds,
        )

    def _transmit(self, connection: smtplib.SMTP, envelope: Envelope) -> SendResult:
        try:
            if connection.has_extn("pipelining"):
                refused = self._open_transaction_pipelined(connection, envelope)
            else:
                refused = self._open_transaction(connection, envelope)
                self._start_data(connection)
            result = self._send_data(connection, envelope, refused)
        except _ResetNeeded as failure:
            self._reset(connection)
            raise failure.error from None
        self._last_used = time.monotonic()
        return result

    def _mail_options(self, connection: smtplib.SMTP, envelope: Envelope) -> list[str]:
        if not envelope.smtputf8:
            return []
        if not connection.has_extn("smtputf8"):
            failure = PermanentFailure(
                "a non-ASCII address needs SMTPUTF8, which the server does not offer",
                transport=self.name,
            )
            raise _ResetNeeded(failure)
        return ["SMTPUTF8", "BODY=8BITMIME"]

    def _open_transaction(self, connection: smtplib.SMTP, envelope: Envelope) -> dict[str, str]:
        options = self._mail_options(connection, envelope)
        code, reply = connection.mail(envelope.sender, options)
        if code != 250:
            self._drop_if_closing(code)
            raise _ResetNeeded(classify_reply(code, reply, transport=self.name))
        refused: dict[str, tuple[int, bytes]] = {}
        for recipient in envelope.recipients:
            code, reply = connection.rcpt(recipient)
            if code not in (250, 251):
                refused[recipient] = (code, reply)
                self._drop_if_closing(code)
                if code == 421:
                    break
        return self._judge_recipients(envelope, refused)

    def _open_transaction_pipelined(
        self, connection: smtplib.SMTP, envelope: Envelope
    ) -> dict[str, str]:
        """MAIL, every RCPT and DATA in one write (RFC 2920), then their replies in order.

        One round trip instead of two plus one per recipient (a very long recipient list takes
        one per 8 KB of commands); the replies are judged exactly as on the step-by-step path.
        """
        options = self._mail_options(connection, envelope)
        replies = self._pipeline(connection, _envelope_commands(envelope, options))
        return self._judge_opening(connection, envelope, replies)

    def _judge_opening(
        self, connection: smtplib.SMTP, envelope: Envelope, replies: list[tuple[int, bytes]]
    ) -> dict[str, str]:
        """The refusals to report, from the replies to a pipelined MAIL, RCPTs and DATA.

        ``_ResetNeeded`` when the message cannot go on; a data phase the server opened anyway
        has been closed by then.
        """
        count = len(envelope.recipients)
        (mail_code, mail_reply), recipient_replies = replies[0], replies[1 : count + 1]
        data_reply = replies[count + 1] if len(replies) == count + 2 else None
        try:
            if mail_code != 250:
                # the RCPTs and DATA behind a refused MAIL were answered (503/554) and read
                raise _ResetNeeded(classify_reply(mail_code, mail_reply, transport=self.name))
            refused = {
                recipient: reply
                for recipient, reply in zip(envelope.recipients, recipient_replies, strict=False)
                if reply[0] not in (250, 251)
            }
            accepted = self._judge_recipients(envelope, refused)
        except _ResetNeeded:
            if data_reply is not None and data_reply[0] == 354:
                # a server that took DATA with no valid sender or recipient before it: RFC 2920
                # ends such a data phase with a lone "." instead of the message
                self._end_empty_data(connection)
            raise
        assert data_reply is not None  # replies stop short only after a 421, judged above
        code, reply = data_reply
        if code != 354:
            self._drop_if_closing(code)
            raise _ResetNeeded(classify_reply(code, reply, transport=self.name))
        return accepted

    def _end_empty_data(self, connection: smtplib.SMTP) -> None:
        """Close a data phase that carries no message with a lone ".".

        A server that hangs up instead of answering loses nothing of it: only the connection
        goes, and the message's outcome stays its refusal.
        """
        try:
            connection.send(b".\r\n")
            connection.getreply()
        except smtplib.SMTPServerDisconnected:
            self._drop()

    def _pipeline(self, connection: smtplib.SMTP, commands: list[bytes]) -> list[tuple[int, bytes]]:
        """The replies to ``commands``, written a group at a time; none after a 421."""
        groups = list(_command_groups(commands))
        connection.send(b"".join(groups[0]))
        return self._read_group_replies(connection, groups)

    def _read_replies(self, connection: smtplib.SMTP, count: int) -> list[tuple[int, bytes]]:
        replies: list[tuple[int, bytes]] = []
        for _ in range(count):
            code, reply = connection.getreply()
            replies.append((code, reply))
            if code == 421:
                # the server is closing the channel: the replies after this one never come
                self._drop()
                break
        return replies

    def _judge_recipients(
        self, envelope: Envelope, refused: dict[str, tuple[int, bytes]]
    ) -> dict[str, str]:
        """The refusals to report with a sent message; ``_ResetNeeded`` if nobody is left."""
        if len(refused) == len(envelope.recipients) or any(c == 421 for c, _ in refused.values()):
            # temporary if any refusal was temporary: some recipient may still get it later
            code, reply = min(refused.values(), key=lambda item: item[0])
            raise _ResetNeeded(classify_reply(code, reply, transport=self.name))
        return {
            rcpt: f"{code} {reply.decode('utf-8', 'replace')}"
            for rcpt, (code, reply) in refused.items()
        }

    def _start_data(self, connection: smtplib.SMTP) -> None:
        code, reply = connection.docmd("DATA")
        if code != 354:
            self._drop_if_closing(code)
            raise _ResetNeeded(classify_reply(code, reply, transport=self.name))

    def _send_data(
        self, connection: smtplib.SMTP, envelope: Envelope, refused: dict[str, str]
    ) -> SendResult:
        connection.send(_data_bytes(envelope))
        outcome = self._data_outcome(connection, refused)
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def _data_outcome(
        self, connection: smtplib.SMTP, refused: dict[str, str]
    ) -> SendResult | DeliveryError:
        """What the reply to a message's data, written in full, says about it."""
        try:
            code, reply = connection.getreply()
        except smtplib.SMTPServerDisconnected:
            # The whole message was transmitted and the server kept it or not: retrying could
            # deliver it twice, so the outcome is recorded as sent, with the doubt spelled out.
            self._drop()
            return SendResult(
                detail="connection closed after the message was transmitted; assumed delivered",
                refused=refused,
            )
        if code != 250:
            self._drop_if_closing(code)
            return classify_reply(code, reply, transport=self.name)
        return SendResult(
            detail=f"{code} {reply.decode('utf-8', 'replace')}", code=code, refused=refused
        )

    def _reset(self, connection: smtplib.SMTP) -> None:
        if self._connection is None:
            return
        try:
            connection.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop_if_closing(self, code: int) -> None:
        # 421: the server is closing the transmission channel
        if code == 421:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        _close_quietly(connection)


def _data_bytes(envelope: Envelope) -> bytes:
    """The message as it travels after DATA's 354: dot-stuffed, ending in CRLF "." CRLF."""
    # bytes.replace finds line feeds at memchr speed; a regex tries "^" at every byte
    payload = envelope.data.replace(b"\n.", b"\n..")
    if payload.startswith(b"."):
        payload = b"." + payload
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload + b".\r\n"


def _envelope_commands(envelope: Envelope, options: list[str]) -> list[bytes]:
    """``MAIL FROM``, one ``RCPT TO`` per recipient and ``DATA``, each line with its CRLF."""
    parameters = "".join(f" {option}" for option in options)
    lines = [f"MAIL FROM:{_path(envelope.sender)}{parameters}"]
    lines += [f"RCPT TO:{_path(recipient)}" for recipient in envelope.recipients]
    lines.append("DATA")
    if any("\r" in line or "\n" in line for line in lines):
        # smtplib's putcmd refuses these too: in one write they would smuggle in commands
        raise ValueError("an envelope address contains a line break")
    # as smtplib does: UTF-8 only once SMTPUTF8 was asked for, else a non-ASCII address fails
    encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
    return [f"{line}\r\n".encode(encoding) for line in lines]


# An envelope address holding none of these is already a plain addr-spec.
_QUOTEADDR_NEEDED = frozenset('<>()"\\,;: \t')


def _path(address: str) -> str:
    """``<address>`` for MAIL FROM / RCPT TO, as ``smtplib.quoteaddr`` writes it.

    quoteaddr runs the pure-Python RFC 5322 parser; envelope addresses are bare addr-specs
    already, so the parser only runs for the rare one that is quoted or odd.
    """
    if _QUOTEADDR_NEEDED.isdisjoint(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _command_groups(commands: list[bytes]) -> Iterator[list[bytes]]:
    """``commands`` cut into groups of at most ``_PIPELINED_GROUP_BYTES``, one write each."""
    group: list[bytes] = []
    size = 0
    for command in commands:
        if group and size + len(command) > _PIPELINED_GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(command)
        size += len(command)
    yield group


class _Queue:
    """The envelopes still to send: those put back after a broken connection, then the rest."""

    def __init__(self, source: Iterator[Envelope]) -> None:
        self._source = source
        self._again: deque[Envelope] = deque()
        self._retried: set[str] = set()
        self._put_back = 0  # how many at the front of _again were put back since next()

    def next(self) -> Envelope | None:
        self._put_back = 0
        if self._again:
            return self._again.popleft()
        return next(self._source, None)

    def push_front(self, envelope: Envelope | None) -> None:
        """Put back an envelope that was read but never written, behind any just put back."""
        if envelope is not None:
            # read after those: it keeps its place behind them, as its outcome must
            self._again.insert(self._put_back, envelope)

    def put_back(self, cut_off: list[Envelope], *, name: str) -> Iterator[Handed]:
        """Queue envelopes a broken connection cut off for one more try on a fresh connection.

        Nothing of them was delivered (no data was written in full), so the new try cannot
        duplicate them; one cut off a second time fails as temporary.
        """
        again = []
        for envelope in cut_off:
            if envelope.message_id in self._retried:
                yield envelope, TemporaryFailure("server closed the connection", transport=name)
            else:
                self._retried.add(envelope.message_id)
                again.append(envelope)
        self._again.extendleft(reversed(again))
        self._put_back += len(again)


def _close_quietly(connection: smtplib.SMTP | None) -> None:
    if connection is not None:
        with contextlib.suppress(OSError):
            connection.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        # smtplib reports a read that timed out as a disconnect
        if isinstance(error.__context__, TimeoutError):
            return "timed out"
        return "server closed the connection"
    return f"{type(error).__name__}: {error}"
