"""Turn a stored message into an ``email.message.EmailMessage`` and its SMTP envelope."""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from postroom.addresses import split_address
from postroom.db import utcnow
from postroom.messages import Message
from postroom.transports.base import Envelope


def _address(formatted: str) -> Address:
    name, addr = split_address(formatted)
    return Address(display_name=name, addr_spec=addr)


def build_email(message: Message) -> EmailMessage:
    """Headers and body of ``message``; non-ASCII names and subjects come out RFC 2047 encoded."""
    email = EmailMessage(policy=SMTP)
    email["From"] = _address(message.from_addr)
    if message.to:
        email["To"] = [_address(a) for a in message.to]
    if message.cc:
        email["Cc"] = [_address(a) for a in message.cc]
    if message.reply_to:
        email["Reply-To"] = [_address(a) for a in message.reply_to]
    email["Subject"] = message.subject
    email["Date"] = format_datetime(utcnow())
    email["Message-ID"] = message.message_id_header
    for name, value in message.headers.items():
        email[name] = value
    if message.text is not None:
        email.set_content(message.text)
        if message.html is not None:
            email.add_alternative(message.html, subtype="html")
    elif message.html is not None:
        email.set_content(message.html, subtype="html")
    return email


def build_envelope(message: Message) -> Envelope:
    """The envelope for ``message``: bare sender and every recipient, bcc included."""
    return Envelope(
        message_id=message.id,
        sender=split_address(message.from_addr)[1],
        recipients=message.recipients,
        email=build_email(message),
    )
