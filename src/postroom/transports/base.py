"""The Transport protocol every way of handing mail over implements, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from typing import Protocol, runtime_checkable


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
