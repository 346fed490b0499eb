"""The behaviour every transport must show, written once (huey's ``StorageTests`` pattern).

A test class for a transport subclasses ``TransportContract`` and provides two fixtures:

``transport``
    the transport under test; the fixture closes it afterwards.
``delivered``
    a callable returning what reached the far side so far, oldest first, as ``Delivery``
    records: the bytes a server received, the file written, the text printed.

A transport that writes the message with other line endings than CRLF (the console) says so
in ``linesep``; everything else must arrive exactly as ``EmailMessage.as_bytes()`` produced it.
"""

from __future__ import annotations

import email
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.policy import SMTP, default
from email.utils import format_datetime

import pytest

from postroom.transports.base import Envelope, SendResult, Transport

_ids = itertools.count(1)

SENDER = Address("Zoë Ångström", addr_spec="zoe@sender.test")
TO = (
    Address("Jürgen Groß", addr_spec="juergen@example.test"),
    Address("", addr_spec="ann@example.test"),
)
CC = (Address("Ça Va", addr_spec="cc@example.test"),)
BCC = ("hidden@example.test", "also-hidden@example.test")
SUBJECT = "Grüße aus Köln — your order №42 is on its way ✉"
TEXT = "Hallo Jürgen,\n\nyour parcel is on its way.\n\n— Zoë\n"
HTML = "<p>Hallo <b>Jürgen</b>,</p>\n<p>your parcel is on its way.</p>\n<p>— Zoë</p>\n"


@dataclass(frozen=True)
class Delivery:
    """What one send left on the far side of a transport."""

    data: bytes
    recipients: tuple[str, ...] | None = None  # None: this transport keeps no envelope


def make_envelope(
    *,
    subject: str = SUBJECT,
    text: str | None = TEXT,
    html: str | None = HTML,
    bcc: Sequence[str] = (),
    attachments: Sequence[tuple[str, bytes]] = (),
    policy: email.policy.Policy = SMTP,
) -> Envelope:
    """An envelope as ``postroom.mime`` builds them: policy SMTP, Bcc only in the envelope."""
    message_id = f"{next(_ids):06d}{datetime.now(UTC):%H%M%S%f}"[:26]
    message = EmailMessage(policy=policy)
    message["From"] = SENDER
    message["To"] = TO
    message["Cc"] = CC
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    message["Message-ID"] = f"<{message_id}@postroom.test>"
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    for filename, content in attachments:
        message.add_attachment(
            content, maintype="application", subtype="octet-stream", filename=filename
        )
    recipients = [a.addr_spec for a in (*TO, *CC)] + list(bcc)
    return Envelope.from_email(message_id, SENDER.addr_spec, recipients, message)


def parse(data: bytes) -> EmailMessage:
    """``data`` parsed back into a message."""
    parsed = email.message_from_bytes(data, policy=default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(message: Message) -> list[tuple[str, object]]:
    """Every part's content type and decoded content, line endings normalised to LF."""
    found: list[tuple[str, object]] = []
    for part in message.walk():
        assert isinstance(part, EmailMessage)
        if part.is_multipart():
            found.append((part.get_content_type(), None))
            continue
        content = part.get_content()
        if isinstance(content, str):
            content = content.replace("\r\n", "\n")
        found.append((part.get_content_type(), content))
    return found


def assert_same_message(data: bytes, sent: EmailMessage) -> None:
    """``data`` parses back into the headers and parts of ``sent``."""
    received = parse(data)
    assert received.keys() == sent.keys()
    for name in sent:
        expected = [str(value) for value in sent.get_all(name, [])]
        assert [str(value) for value in received.get_all(name, [])] == expected
    assert parts(received) == parts(sent)


Delivered = Callable[[], list[Delivery]]


class TransportContract:
    """Tests every transport must pass; subclasses provide ``transport`` and ``delivered``."""

    linesep = b"\r\n"  # line endings of the delivered bytes

    @pytest.fixture
    def transport(self) -> Transport:
        raise NotImplementedError("a transport test class provides the transport fixture")

    @pytest.fixture
    def delivered(self) -> Delivered:
        raise NotImplementedError("a transport test class provides the delivered fixture")

    def expected_bytes(self, envelope: Envelope) -> bytes:
        return envelope.data.replace(b"\r\n", self.linesep)

    def test_transport_implements_the_protocol(self, transport: Transport) -> None:
        assert isinstance(transport, Transport)
        assert transport.name and isinstance(transport.name, str)

    def test_send_returns_a_result_without_refusals(self, transport: Transport) -> None:
        result = transport.send(make_envelope())

        assert isinstance(result, SendResult)
        assert result.detail
        assert result.refused == {}

    def test_message_arrives_byte_for_byte(
        self, transport: Transport, delivered: Delivered
    ) -> None:
        envelope = make_envelope()

        transport.send(envelope)

        [delivery] = delivered()
        assert delivery.data == self.expected_bytes(envelope)

    def test_non_ascii_headers_and_both_parts_parse_back_unchanged(
        self, transport: Transport, delivered: Delivered
    ) -> None:
        envelope = make_envelope()

        transport.send(envelope)

        [delivery] = delivered()
        header_block = delivery.data.split(self.linesep * 2, 1)[0]
        assert header_block.isascii(), "non-ASCII headers must be RFC 2047 encoded"
        assert_same_message(delivery.data, envelope.email)
        received = parse(delivery.data)
        assert received["Subject"] == SUBJECT
        assert received["From"].addresses[0] == SENDER
        assert received["To"].addresses == TO
        assert [part.get_content_type() for part in received.walk()] == [
            "multipart/alternative",
            "text/plain",
            "text/html",
        ]

    def test_bcc_recipients_get_the_message_without_a_bcc_header(
        self, transport: Transport, delivered: Delivered
    ) -> None:
        envelope = make_envelope(bcc=BCC)

        transport.send(envelope)

        [delivery] = delivered()
        if delivery.recipients is not None:
            assert sorted(delivery.recipients) == sorted(envelope.recipients)
            assert set(BCC) <= set(delivery.recipients)
        received = parse(delivery.data)
        assert "Bcc" not in received
        assert all(address not in delivery.data.decode() for address in BCC)
        assert received["Cc"].addresses == CC

    def test_attachment_arrives_intact(self, transport: Transport, delivered: Delivered) -> None:
        content = bytes(range(256)) * 40
        envelope = make_envelope(attachments=[("Übersicht.bin", content)])

        transport.send(envelope)

        [delivery] = delivered()
        assert_same_message(delivery.data, envelope.email)
        [attachment] = parse(delivery.data).iter_attachments()
        assert attachment.get_filename() == "Übersicht.bin"
        assert attachment.get_content() == content

    def test_lines_starting_with_a_dot_arrive_intact(
        self, transport: Transport, delivered: Delivered
    ) -> None:
        # a lone "." ends DATA in SMTP; every line that starts with one must be dot-stuffed
        text = ".\n..\n.hidden\nmiddle . dot\n. \n.\n"
        envelope = make_envelope(text=text, html=None)

        transport.send(envelope)

        [delivery] = delivered()
        assert delivery.data == self.expected_bytes(envelope)
        assert parse(delivery.data).get_content().replace("\r\n", "\n") == text

    def test_long_lines_arrive_intact(self, transport: Transport, delivered: Delivered) -> None:
        text = "ä" * 3000 + "\n" + "x" * 5000 + "\n"
        envelope = make_envelope(text=text, html=None)

        transport.send(envelope)

        [delivery] = delivered()
        assert max(len(line) for line in delivery.data.splitlines()) <= 998
        assert parse(delivery.data).get_content().replace("\r\n", "\n") == text

    def test_each_message_arrives_once_in_order(
        self, transport: Transport, delivered: Delivered
    ) -> None:
        envelopes = [make_envelope(subject=f"Nachricht {i}") for i in range(5)]

        for envelope in envelopes:
            transport.send(envelope)

        assert [parse(d.data)["Message-ID"] for d in delivered()] == [
            e.email["Message-ID"] for e in envelopes
        ]

    def test_send_works_again_after_close(self, transport: Transport, delivered: Delivered) -> None:
        first, second = make_envelope(), make_envelope()

        transport.send(first)
        transport.close()
        transport.send(second)

        assert [d.data for d in delivered()] == [
            self.expected_bytes(first),
            self.expected_bytes(second),
        ]

    def test_close_before_any_send_and_twice_is_harmless(
        self, transport: Transport, delivered: Delivered
    ) -> None:
        transport.close()
        transport.close()
        transport.send(make_envelope())
        transport.close()
        transport.close()

        assert len(delivered()) == 1
