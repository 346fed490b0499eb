"""smtp:// — hand messages to an SMTP server over a connection kept open between messages."""

from __future__ import annotations

import contextlib
import math
import re
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from postroom.errors import ConfigurationError, DeliveryError, PermanentFailure, TemporaryFailure
from postroom.transports.base import Envelope, SendResult

_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


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
        # A kept connection the server had already closed: nothing was transmitted, so one
        # retry on a fresh connection cannot duplicate the message.
        return self._transmit_once_fresh(envelope)

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

    def _ready_connection(self) -> smtplib.SMTP:
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
            refused = self._open_transaction(connection, envelope)
            result = self._send_data(connection, envelope, refused)
        except _ResetNeeded as failure:
            self._reset(connection)
            raise failure.error from None
        self._last_used = time.monotonic()
        return result

    def _open_transaction(self, connection: smtplib.SMTP, envelope: Envelope) -> dict[str, str]:
        options: list[str] = []
        if envelope.smtputf8:
            if not connection.has_extn("smtputf8"):
                failure = PermanentFailure(
                    "a non-ASCII address needs SMTPUTF8, which the server does not offer",
                    transport=self.name,
                )
                raise _ResetNeeded(failure)
            options = ["SMTPUTF8", "BODY=8BITMIME"]
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
        if len(refused) == len(envelope.recipients) or any(c == 421 for c, _ in refused.values()):
            # temporary if any refusal was temporary: some recipient may still get it later
            code, reply = min(refused.values(), key=lambda item: item[0])
            raise _ResetNeeded(classify_reply(code, reply, transport=self.name))
        return {
            rcpt: f"{code} {reply.decode('utf-8', 'replace')}"
            for rcpt, (code, reply) in refused.items()
        }

    def _send_data(
        self, connection: smtplib.SMTP, envelope: Envelope, refused: dict[str, str]
    ) -> SendResult:
        code, reply = connection.docmd("DATA")
        if code != 354:
            self._drop_if_closing(code)
            raise _ResetNeeded(classify_reply(code, reply, transport=self.name))
        payload = _DOT_AT_LINE_START.sub(b"..", envelope.data)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        connection.send(payload + b".\r\n")
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
            raise classify_reply(code, reply, transport=self.name)
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
