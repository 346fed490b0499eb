"""The Transport protocol every way of handing mail over implements, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Envelope:
    """What a transport needs to hand one message over."""

    message_id: str  # postroom's id, for logs and provider metadata
    sender: str  # bare envelope sender (MAIL FROM)
    recipients: list[str]  # bare envelope recipients (RCPT TO), bcc included
    email: EmailMessage  # headers and body; Bcc is never among its headers


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
