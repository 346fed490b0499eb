"""The Transport protocol every way of handing mail over implements, and what it returns."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from typing import Protocol, runtime_checkable

from postroom.errors import DeliveryError, TemporaryFailure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Envelope:
    """What a transport needs to hand one message over: the envelope and the exact bytes."""

    message_id: str  # postroom's id, for logs and provider metadata
    sender: str  # bare envelope sender (MAIL FROM)
    recipients: list[str]  # bare envelope recipients (RCPT TO), bcc included
    data: bytes  # the whole message with CRLF line endings, signed if DKIM applies; no Bcc
    smtputf8: bool = False  # an address needs SMTPUTF8 (a non-ASCII local part)

    @classmethod
    def from_email(
        cls, message_id: str, sender: str, recipients: list[str], email: EmailMessage
    ) -> Envelope:
        """An envelope for an already built message, serialised with CRLF line endings."""
        policy = (
            email.policy if email.policy.linesep == "\r\n" else email.policy.clone(linesep="\r\n")
        )
        return cls(message_id, sender, recipients, email.as_bytes(policy=policy))

    @property
    def email(self) -> EmailMessage:
        """The message parsed back, for transports that need its structure (HTTP providers)."""
        parsed = message_from_bytes(self.data, policy=SMTPUTF8 if self.smtputf8 else SMTP)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(frozen=True)
class SendResult:
    """A message accepted by the next hop."""

    detail: str  # the server's reply, recorded on the event row
    code: int | None = None
    refused: dict[str, str] = field(default_factory=dict)  # recipients the server turned down


@runtime_checkable
class Transport(Protocol):
    """Hands messages to a mail server, a provider's API, or somewhere local.

    ``name`` identifies the transport in events and metrics. ``send`` returns a ``SendResult``
    once the next hop accepted the message, and raises ``TemporaryFailure`` (retry later) or
    ``PermanentFailure`` (never retry) otherwise; it may keep connections open between calls.
    ``close`` releases them; the transport remains usable and reconnects on the next ``send``.
    """

    name: str

    def send(self, envelope: Envelope) -> SendResult:
        """Hand over one message."""
        ...

    def close(self) -> None:
        """Release any connection held open."""
        ...


@runtime_checkable
class ConnectingTransport(Transport, Protocol):
    """A transport whose connection is worth opening before a message is ready to go.

    Delivery takes rate-limit tokens only once ``connect`` has returned, so that a connection's
    set-up never stands between a token and the message it lets through.
    """

    def connect(self) -> bool:
        """Open a connection if none is usable; True if a new one was opened.

        Raises ``TemporaryFailure`` if it cannot; the next ``send`` or ``send_each`` then
        reports that failure instead of trying again.
        """
        ...


# What ``send_each`` yields per envelope: the result, or the error ``send`` would have raised.
Handed = tuple[Envelope, SendResult | DeliveryError]


@runtime_checkable
class StreamingTransport(Transport, Protocol):
    """A transport that does better with many messages at once than with one call each.

    ``send_each`` behaves as ``send`` on every envelope in order, but may overlap them (SMTP
    writes a message's data together with the next one's envelope). It reads ``envelopes``
    lazily, a message or two ahead of the outcomes it yields. Closing the generator early
    leaves every envelope without a yielded outcome untransmitted.
    """

    def send_each(self, envelopes: Iterable[Envelope]) -> Generator[Handed, None, None]:
        """Hand over every envelope; yield each one's outcome in order."""
        ...


def send_each(transport: Transport, envelopes: Iterable[Envelope]) -> Generator[Handed, None, None]:
    """Hand ``envelopes`` to ``transport`` in order, yielding each one's outcome as it is known.

    A ``StreamingTransport`` overlaps the messages its own way; any other is called once per
    message. An unexpected exception from ``send`` becomes that message's ``TemporaryFailure``
    (a bug or a passing fault: retrying loses nothing).
    """
    if isinstance(transport, StreamingTransport):
        return transport.send_each(envelopes)
    return one_at_a_time(transport, envelopes)


def one_at_a_time(
    transport: Transport, envelopes: Iterable[Envelope]
) -> Generator[Handed, None, None]:
    """``send`` each envelope in turn, its error (or an unexpected one's) yielded as its outcome."""
    for envelope in envelopes:
        outcome: SendResult | DeliveryError
        try:
            outcome = transport.send(envelope)
        except DeliveryError as error:
            outcome = error
        except Exception as error:
            name, message_id = transport.name, envelope.message_id
            logger.exception("transport %s raised while sending %s", name, message_id)
            outcome = TemporaryFailure(type(error).__name__, transport=name)
        yield envelope, outcome
