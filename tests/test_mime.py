from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest

from postroom.attachments import Attachment, check_attachments
from postroom.messages import Message
from postroom.mime import WireAddress, build_envelope

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def message(**fields) -> Message:
    values = {
        "id": "01TESTMESSAGE0000000000000",
        "from_addr": "Zoë Sender <zoe@example.com>",
        "to": ["Ann Smith <ann@example.com>"],
        "cc": [],
        "bcc": [],
        "reply_to": [],
        "subject": "Grüße ✓",
        "text": "Hello",
        "html": None,
        "headers": {},
        "message_id_header": "<01TESTMESSAGE0000000000000@example.com>",
        **fields,
    }
    return Message(**values)


def parse(data: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def structure(parsed) -> list[str]:
    return [part.get_content_type() for part in parsed.walk()]


def files(*items):
    return check_attachments(list(items), max_attachment_bytes=10**6)


def test_text_only_is_a_single_plain_part_with_ascii_headers():
    envelope = build_envelope(message(bcc=["hidden@example.com"]), now=NOW)
    head = envelope.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    parsed = parse(envelope.data)
    assert structure(parsed) == ["text/plain"]
    assert parsed["Subject"] == "Grüße ✓"
    assert parsed["From"] == "Zoë Sender <zoe@example.com>"
    assert parsed["Date"] == "Mon, 23 Nov 2026 12:00:00 +0000"
    assert parsed["Message-ID"] == "<01TESTMESSAGE0000000000000@example.com>"
    assert "Bcc" not in parsed
    assert envelope.recipients == ["ann@example.com", "hidden@example.com"]
    assert not envelope.smtputf8


def test_nesting_is_mixed_then_alternative_then_related():
    attachments = files(
        Attachment("logo.png", b"\x89PNG\r\n", inline=True, content_id="logo"),
        Attachment("ticket.pdf", b"%PDF-1.7"),
    )
    envelope = build_envelope(message(html='<p><img src="cid:logo"></p>'), attachments, now=NOW)
    parsed = parse(envelope.data)
    assert structure(parsed) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    image = next(p for p in parsed.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo>"
    assert image.get_content() == b"\x89PNG\r\n"
    pdf = next(parsed.iter_attachments())
    assert (pdf.get_filename(), pdf.get_content()) == ("ticket.pdf", b"%PDF-1.7")


def test_html_only_is_a_single_html_part():
    parsed = parse(build_envelope(message(text=None, html="<b>hi</b>"), now=NOW).data)
    assert structure(parsed) == ["text/html"]


def test_idn_domains_travel_in_ascii_form():
    envelope = build_envelope(message(to=["Jörg <jorg@bücher.example>"]), now=NOW)
    assert envelope.recipients == ["jorg@xn--bcher-kva.example"]
    assert parse(envelope.data)["To"].addresses[0].domain == "xn--bcher-kva.example"
    assert not envelope.smtputf8


def test_a_non_ascii_local_part_needs_smtputf8_and_raw_utf8_headers():
    envelope = build_envelope(message(to=["Jörg <jörg@example.de>"]), now=NOW)
    assert envelope.smtputf8
    assert envelope.recipients == ["jörg@example.de"]
    assert "To: Jörg <jörg@example.de>".encode() in envelope.data


def test_custom_headers_and_very_long_lines_survive():
    long_line = "word " * 400
    envelope = build_envelope(message(text=long_line, headers={"X-Campaign": "spring ✿"}), now=NOW)
    assert all(len(line) <= 998 for line in envelope.data.split(b"\r\n"))
    parsed = parse(envelope.data)
    assert parsed["X-Campaign"] == "spring ✿"
    # the parser keeps the CR of CRLF inside a decoded part; the text itself is intact
    assert parsed.get_content().splitlines()[0] == long_line


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("x" * 998, "7bit"),  # SMTP's longest line: goes as it is
        ("short\n" + "y" * 500 + "  \n.\nend", "7bit"),
        ("x" * 999, "quoted-printable"),  # past the limit: quoted, soft line breaks
        ("x" * 100 + "\x00", "quoted-printable"),  # NUL is not 7bit data
        # non-ASCII: 7-bit clean all the same, in whichever encoding is shorter
        ("é" + "x" * 100, "quoted-printable"),
        ("é" + "x" * 50, "quoted-printable"),
        ("Привет, мир! " * 3, "base64"),
    ],
)
def test_bodies_go_unencoded_when_ascii_lines_fit_smtp_s_limit(body, expected):
    for shape in ({"text": body}, {"text": None, "html": body}, {"text": body, "html": body}):
        with_attachment = files(Attachment(filename="a.txt", content=b"a"))
        for attachments in ((), with_attachment):  # fast path, then EmailMessage
            data = build_envelope(message(**shape), attachments, now=NOW).data
            assert f"Content-Transfer-Encoding: {expected}\r\n".encode() in data
            parsed = parse(data)
            parts = [
                part
                for part in parsed.walk()
                if part.get_content_maintype() == "text" and part.get_filename() is None
            ]
            assert len(parts) == len(shape) - list(shape.values()).count(None)
            for part in parts:
                assert part.get_content().replace("\r\n", "\n") == body + "\n"
            if expected == "7bit":
                assert body.split("\n")[1 if "\n" in body else 0].encode() in data


def test_only_a_message_needing_smtputf8_carries_8bit_data():
    body = "Grüße aus Köln"
    plain = build_envelope(message(text=body), now=NOW)
    assert plain.data.isascii()  # a server without 8BITMIME may take it; a relay won't convert
    utf8 = build_envelope(message(text=body, to=["jörg@example.de"]), now=NOW)
    assert utf8.smtputf8  # sent with BODY=8BITMIME, which SMTPUTF8 implies
    assert b"Content-Transfer-Encoding: 8bit\r\n" in utf8.data
    assert body.encode() in utf8.data
    for envelope in (plain, utf8):
        assert parse(envelope.data).get_content().rstrip("\r\n") == body


def test_signing_receives_the_bytes_and_the_ascii_sender_domain():
    seen = []

    def sign(data: bytes, domain: str) -> bytes:
        seen.append(domain)
        return b"DKIM-Signature: test\r\n" + data

    envelope = build_envelope(message(from_addr="shop@bücher.example"), now=NOW, sign=sign)
    assert seen == ["xn--bcher-kva.example"]
    assert envelope.data.startswith(b"DKIM-Signature: test\r\n")


@pytest.mark.parametrize(
    ("formatted", "addr", "utf8"),
    [("a@example.com", "a@example.com", False), ("x <é@exämple.com>", "é@exämple.com", True)],
)
def test_wire_addresses(formatted, addr, utf8):
    wire = WireAddress.parse(formatted)
    assert (wire.addr, wire.smtputf8) == (addr, utf8)
