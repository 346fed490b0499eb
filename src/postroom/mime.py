"""Turn a stored message into the exact bytes to send, and its SMTP envelope.

Structure, outermost first: ``multipart/mixed`` (only with attachments) → ``multipart/
alternative`` (text and HTML) → ``multipart/related`` (HTML and its inline images, only with
inline images). Headers go through ``email.headerregistry`` under the SMTP policy, so non-ASCII
display names and subjects come out RFC 2047 encoded, and bodies are 7-bit clean too
(``SMTP_7BIT``). Domains are sent in their ASCII (IDNA) form; only a non-ASCII local part needs
SMTPUTF8, and only then are headers raw UTF-8 and bodies perhaps 8bit. The common shapes (text
and/or HTML, no attachments, no SMTPUTF8) are written by ``mime_fast`` instead, to the same
bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime
from functools import lru_cache

from postroom import mime_fast
from postroom.addresses import ascii_domain, format_address, split_address
from postroom.attachments import CheckedAttachment
from postroom.messages import ClaimedMessage, Message
from postroom.transports.base import Envelope

Sign = Callable[[bytes, str], bytes]  # (message bytes, sender domain) -> signed bytes

# Without SMTPUTF8 a message is 7-bit clean, bodies included: a non-ASCII body goes
# quoted-printable or base64, never 8bit. A relay that converts 8bit data for a next hop without
# 8BITMIME breaks the DKIM signature (so RFC 6376 5.3 asks signers to convert first), and a server
# that does not offer 8BITMIME must not be sent 8bit data at all. SMTPUTF8 implies 8BITMIME.
SMTP_7BIT = SMTP.clone(cte_type="7bit")


@dataclass(frozen=True)
class WireAddress:
    """An address as it travels: display name, addr-spec, and whether it needs SMTPUTF8."""

    name: str
    addr: str
    smtputf8: bool

    @classmethod
    def parse(cls, formatted: str) -> WireAddress:
        """The wire form of an address stored by ``addresses.normalize_address``."""
        return _parse_wire(formatted)

    @property
    def domain(self) -> str:
        """The domain part, as sent."""
        return self.addr.rpartition("@")[2]

    def header(self, *, utf8: bool) -> Address | str:
        """For a ``From``/``To``/``Cc``/``Reply-To`` header of a message with or without SMTPUTF8.

        ``Address`` refuses a non-ASCII local part, which RFC 6532 allows in a UTF-8 message;
        there the header is given as text and written raw.
        """
        if utf8:
            return format_address(self.name, self.addr)
        return Address(display_name=self.name, addr_spec=self.addr)


@lru_cache(maxsize=4096)
def _parse_wire(formatted: str) -> WireAddress:
    # cached: parseaddr is pure Python, and senders and reply-to addresses repeat
    name, addr = split_address(formatted)
    local, _, domain = addr.rpartition("@")
    if local.isascii():
        return WireAddress(name, f"{local}@{ascii_domain(domain)}", smtputf8=False)
    return WireAddress(name, addr, smtputf8=True)


def build_email(
    message: Message | ClaimedMessage,
    attachments: Sequence[CheckedAttachment] = (),
    *,
    now: datetime,
    smtputf8: bool = False,
) -> EmailMessage:
    """Headers and body of ``message``, with its attachments and inline images."""
    email = EmailMessage(policy=SMTPUTF8 if smtputf8 else SMTP_7BIT)
    email["From"] = WireAddress.parse(message.from_addr).header(utf8=smtputf8)
    for header, addresses in (
        ("To", message.to),
        ("Cc", message.cc),
        ("Reply-To", message.reply_to),
    ):
        if addresses:
            values = [WireAddress.parse(a).header(utf8=smtputf8) for a in addresses]
            email[header] = ", ".join(map(str, values)) if smtputf8 else values
    email["Subject"] = message.subject
    email["Date"] = format_datetime(now)
    email["Message-ID"] = message.message_id_header
    for name, value in message.headers.items():
        email[name] = value
    _set_body(email, message.text, message.html, [a for a in attachments if a.inline])
    for attachment in attachments:
        if not attachment.inline:
            maintype, _, subtype = attachment.content_type.partition("/")
            email.add_attachment(
                attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
            )
    return email


def _set_body(
    email: EmailMessage, text: str | None, html: str | None, inline: Sequence[CheckedAttachment]
) -> None:
    # the transfer encoding is chosen here rather than by the stdlib, which quotes any line
    # over 78 columns: see mime_fast.body_transfer_encoding
    if text is not None:
        email.set_content(text, cte=mime_fast.body_transfer_encoding(text))
    if html is None:
        return
    html_part: MIMEPart
    if text is None:
        email.set_content(html, subtype="html", cte=mime_fast.body_transfer_encoding(html))
        html_part = email
    else:
        email.add_alternative(html, subtype="html", cte=mime_fast.body_transfer_encoding(html))
        *_, html_part = email.iter_parts()
    for image in inline:
        maintype, _, subtype = image.content_type.partition("/")
        # add_related turns the HTML part into multipart/related holding the HTML and images
        html_part.add_related(
            image.content,
            maintype=maintype,
            subtype=subtype,
            cid=f"<{image.content_id}>",
            filename=image.filename,
            disposition="inline",
        )


def build_envelope(
    message: Message | ClaimedMessage,
    attachments: Sequence[CheckedAttachment] = (),
    *,
    now: datetime,
    sign: Sign | None = None,
) -> Envelope:
    """The envelope and signed bytes of ``message``: sender, every recipient (bcc too), data."""
    sender = WireAddress.parse(message.from_addr)
    to, cc, bcc, reply_to = (
        [WireAddress.parse(a) for a in field]
        for field in (message.to, message.cc, message.bcc, message.reply_to)
    )
    recipients = [*to, *cc, *bcc]
    smtputf8 = any(w.smtputf8 for w in (sender, *recipients, *reply_to))
    data = None
    if not attachments and not smtputf8:
        address_headers = [
            (name, [(w.name, w.addr) for w in wires])
            for name, wires in (("From", [sender]), ("To", to), ("Cc", cc), ("Reply-To", reply_to))
        ]
        data = mime_fast.build_bytes(message, address_headers, now=now)
    if data is None:
        data = build_email(message, attachments, now=now, smtputf8=smtputf8).as_bytes()
    if sign is not None:
        data = sign(data, sender.domain)
    return Envelope(
        message_id=message.id,
        sender=sender.addr,
        recipients=[r.addr for r in recipients],
        data=data,
        smtputf8=smtputf8,
    )
