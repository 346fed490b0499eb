# ruff: noqa: RUF001 (the corpus is non-ASCII on purpose: Cyrillic, Greek and fullwidth forms)
"""Corpora for the content acceptance tests: messages to deliver, and template attacks.

Each corpus message is data: the arguments given to ``Postroom.send`` and, written out by hand,
what a receiver must parse back from the bytes the SMTP server got. Expectations are derived
from what the caller asked for, never from postroom's stored copy. The transformations postroom
documents are spelled out where they apply: domains travel in their ASCII (IDNA) form unless a
local part needs SMTPUTF8, an HTML-only body gains a text part derived from it, and a template's
HTML has its CSS inlined.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart
from pathlib import Path
from typing import Any

import dkim

from postroom.attachments import Attachment
from tests.servers import ReceivedMessage

# MIME structure: a leaf content type, or (multipart type, children).
Tree = str | tuple[str, tuple["Tree", ...]]
PLAIN = "text/plain"
HTML = "text/html"

RSA_DOMAIN = "example.com"  # signed with RSA, selector RSA_SELECTOR
RSA_SELECTOR = "rsa2026"
ED_DOMAIN = "bücher.example"  # signed with Ed25519; d= carries the ASCII form
ED_DOMAIN_ASCII = "xn--bcher-kva.example"
ED_SELECTOR = "ed2026"
# Unsigned: no key at all, and a subdomain of a signed domain (a parent's key never signs it).
NO_KEY_DOMAIN = "nokey.example"
SUBDOMAIN = "mail.example.com"
JP_DOMAIN_ASCII = "xn--r8jz45g.xn--zckzah"  # 例え.テスト

# Bytes of every shape, from a fixed seed so that a failure can be reproduced.
_random = random.Random(20260603)
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + _random.randbytes(20_000) + b"\n%%EOF\n"
BLOB_3MB = _random.randbytes(3 * 1024 * 1024)
LATIN1_TEXT = "café crème brûlée\r\nœuvre – ÿ\n".encode("cp1252") + b"\xff\xfe\x00\x81"
CSV = "nom,ville\nZoë,Köln\nИван,Москва\n山田,東京\n".encode()
JSON = b'{"order": 42, "items": ["Livre", "Stylo"]}'
GZIP_BYTES = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + _random.randbytes(500)
# The smallest GIF: one transparent pixel.
GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144003b"
)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def zip_archive() -> bytes:
    """A zip of two files with fixed timestamps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in (("readme.txt", b"hello\n" * 100), ("données/a.bin", PDF[:4000])):
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 6, 3, 12, 0, 0)), content)
    return buffer.getvalue()


LOGO = png(64, 32, (200, 30, 30))
CHART = png(300, 200, (20, 120, 220))
ZIP = zip_archive()


def mixed(*parts: Tree) -> Tree:
    return ("multipart/mixed", parts)


def alternative(*parts: Tree) -> Tree:
    return ("multipart/alternative", parts)


def related(*parts: Tree) -> Tree:
    return ("multipart/related", parts)


@dataclass(frozen=True)
class Expected:
    """An attachment or inline image as the receiver must see it."""

    filename: str
    content_type: str
    content: bytes
    inline: bool = False
    content_id: str | None = None

    def summary(self) -> tuple[str, str, bool, str | None, int, str]:
        """Everything but the bytes themselves, which compare by size and digest."""
        digest = hashlib.sha256(self.content).hexdigest()
        return (
            self.filename,
            self.content_type,
            self.inline,
            self.content_id,
            len(self.content),
            digest,
        )


Address = tuple[str, str]  # (display name, addr-spec) as parsed from a header


@dataclass(frozen=True)
class Case:
    """One corpus message: what the caller sent and what must arrive."""

    name: str
    send: Mapping[str, Any]
    structure: Tree
    # Decoded bodies; the text of an HTML-only message is the documented derivation.
    text: str | None
    html: str | None
    addresses: Mapping[str, Sequence[Address]]  # From, To, Cc, Reply-To: exactly these present
    headers: Mapping[str, str]  # Subject and custom headers, decoded
    envelope_from: str
    envelope_to: Sequence[str]
    attachments: Sequence[Expected] = ()
    signed_by: str | None = None  # the d= of the DKIM signature, or None for unsigned mail
    smtputf8: bool = False


# Templates the corpus renders; saved before sending.
TEMPLATES: dict[str, dict[str, str]] = {
    "receipt": {
        "subject": "Reçu n°{{ order }} — {{ name }}",
        "html": (
            "<style>p { color: #c00; }</style><h1>Merci {{ name }}</h1>"
            '<p>Commande n°{{ order }}</p><img src="cid:logo@example.com" alt="logo">'
        ),
    },
    "digest": {
        "subject": "Résumé for {{ user }}",
        "text": "Hello {{ user }},\n{% for item in items %}- {{ item }}\n{% endfor %}",
        "html": "<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>",
    },
}


def _people(prefix: str, count: int, domain: str) -> list[str]:
    return [f"Empfänger {prefix}{i} <{prefix}{i}@{domain}>" for i in range(count)]


def _parsed_people(prefix: str, count: int, domain: str) -> list[Address]:
    return [(f"Empfänger {prefix}{i}", f"{prefix}{i}@{domain}") for i in range(count)]


def _bare(people: Sequence[Address]) -> list[str]:
    return [addr for _, addr in people]


LONG_SUBJECT = (
    "Ihre Bestellung ist unterwegs: "
    + "Größe XL, Farbe Grün, Menge zwölf — "
    + "Ваш заказ отправлен сегодня утром, "
    + "ご注文の商品を発送いたしました。" * 4
    + " 🎉📦✓ "
    + "Größe XXL, Farbe Blau, Menge dreizehn — " * 3
    + "Ende"
)
LONG_TEXT = (
    "x" * 5000
    + "\n"
    + " ".join(["word"] * 600)
    + "\n"
    + "ü" * 1500
    + "\n.a line starting with a dot\nFrom the start of a line\n"
    + "a\tb\tc" * 400
    + "\n"
)
LONG_HTML = "<p>" + "y" * 3000 + "</p><p>" + "界" * 1200 + "</p>"
HTML_ONLY = (
    "<h1>Bonjour Zoë</h1><p>Votre commande "
    '<a href="https://shop.example/o/42">n°42</a> est partie.</p>'
    "<ul><li>Livre</li><li>Stylo</li></ul>"
)
HTML_ONLY_TEXT = (
    "Bonjour Zoë\n\nVotre commande n°42 (https://shop.example/o/42) est partie.\n\n- Livre\n- Stylo"
)
INLINE_HTML = (
    '<p>Voici le graphique :</p><img src="cid:chart@example.com">'
    '<p>et le pixel <img src="cid:pixel.gif"></p>'
)


def _basic_cases() -> list[Case]:
    shop = f"Shop <shop@{RSA_DOMAIN}>"
    shop_parsed = [("Shop", f"shop@{RSA_DOMAIN}")]
    return [
        Case(
            name="plain-ascii",
            send={"to": "ann@example.net", "subject": "Hello", "from_": shop, "text": "Hi Ann."},
            structure=PLAIN,
            text="Hi Ann.",
            html=None,
            addresses={"From": shop_parsed, "To": [("", "ann@example.net")]},
            headers={"Subject": "Hello"},
            envelope_from=f"shop@{RSA_DOMAIN}",
            envelope_to=["ann@example.net"],
            signed_by=RSA_DOMAIN,
        ),
        Case(
            name="accents",
            send={
                "to": "José Müller <jose@example.net>",
                "cc": ["Łukasz Żółć <lukasz@example.net>", '"Müller, Jörg" <jorg@example.net>'],
                "reply_to": "Support — Ünïcode <help@example.com>",
                "subject": "Grüße aus Köln — Bestellung №42 ✓",
                "from_": f"Zoë Ångström <zoe@{RSA_DOMAIN}>",
                "text": "Hallo José,\nvielen Dank für Ihre Bestellung über 42 €.\n",
                "html": "<p>Hallo José,</p><p>vielen Dank für Ihre Bestellung über 42&nbsp;€.</p>",
            },
            structure=alternative(PLAIN, HTML),
            text="Hallo José,\nvielen Dank für Ihre Bestellung über 42 €.\n",
            html="<p>Hallo José,</p><p>vielen Dank für Ihre Bestellung über 42&nbsp;€.</p>",
            addresses={
                "From": [("Zoë Ångström", f"zoe@{RSA_DOMAIN}")],
                "To": [("José Müller", "jose@example.net")],
                "Cc": [("Łukasz Żółć", "lukasz@example.net"), ("Müller, Jörg", "jorg@example.net")],
                "Reply-To": [("Support — Ünïcode", "help@example.com")],
            },
            headers={"Subject": "Grüße aus Köln — Bestellung №42 ✓"},
            envelope_from=f"zoe@{RSA_DOMAIN}",
            envelope_to=["jose@example.net", "lukasz@example.net", "jorg@example.net"],
            signed_by=RSA_DOMAIN,
        ),
        Case(
            name="cyrillic",
            send={
                "to": "Иван Петров <ivan@example.ru>",
                "subject": "Ваш заказ №17 отправлен",
                "from_": f"Магазин «Книги» <books@{ED_DOMAIN}>",
                "text": "Здравствуйте, Иван!\nВаш заказ отправлен.\n",
            },
            structure=PLAIN,
            text="Здравствуйте, Иван!\nВаш заказ отправлен.\n",
            html=None,
            addresses={
                "From": [("Магазин «Книги»", f"books@{ED_DOMAIN_ASCII}")],
                "To": [("Иван Петров", "ivan@example.ru")],
            },
            headers={"Subject": "Ваш заказ №17 отправлен"},
            envelope_from=f"books@{ED_DOMAIN_ASCII}",
            envelope_to=["ivan@example.ru"],
            signed_by=ED_DOMAIN_ASCII,
        ),
        Case(
            name="cjk",
            send={
                "to": "山田太郎 <taro@example.jp>",
                "subject": "ご注文ありがとうございます（注文番号：12345）",
                "from_": f"ショップ <shop@{RSA_DOMAIN}>",
                "text": "山田様\n\nご注文ありがとうございます。\n",
                "html": "<p>山田様</p><p>ご注文ありがとうございます。</p>",
            },
            structure=alternative(PLAIN, HTML),
            text="山田様\n\nご注文ありがとうございます。\n",
            html="<p>山田様</p><p>ご注文ありがとうございます。</p>",
            addresses={
                "From": [("ショップ", f"shop@{RSA_DOMAIN}")],
                "To": [("山田太郎", "taro@example.jp")],
            },
            headers={"Subject": "ご注文ありがとうございます（注文番号：12345）"},
            envelope_from=f"shop@{RSA_DOMAIN}",
            envelope_to=["taro@example.jp"],
            signed_by=RSA_DOMAIN,
        ),
        Case(
            name="emoji",
            send={
                "to": "Zoë 🦊 <zoe@example.org>",
                "subject": "🎉🎂 Happy birthday, Zoë! 🥳",
                "from_": f"Party 🎉 Bot <party@{NO_KEY_DOMAIN}>",
                "text": "Have a great day 🎈🎁\n",
                "html": "<p>Have a great day 🎈🎁</p>",
            },
            structure=alternative(PLAIN, HTML),
            text="Have a great day 🎈🎁\n",
            html="<p>Have a great day 🎈🎁</p>",
            addresses={
                "From": [("Party 🎉 Bot", f"party@{NO_KEY_DOMAIN}")],
                "To": [("Zoë 🦊", "zoe@example.org")],
            },
            headers={"Subject": "🎉🎂 Happy birthday, Zoë! 🥳"},
            envelope_from=f"party@{NO_KEY_DOMAIN}",
            envelope_to=["zoe@example.org"],
        ),
        Case(
            name="long-non-ascii-subject",
            send={"to": "ann@example.net", "subject": LONG_SUBJECT, "from_": shop, "text": "."},
            structure=PLAIN,
            text=".",
            html=None,
            addresses={"From": shop_parsed, "To": [("", "ann@example.net")]},
            headers={"Subject": LONG_SUBJECT},
            envelope_from=f"shop@{RSA_DOMAIN}",
            envelope_to=["ann@example.net"],
            signed_by=RSA_DOMAIN,
        ),
        Case(
            name="subdomain-of-a-signed-domain",
            send={
                "to": "ann@example.net",
                "subject": "Unsigned",
                "from_": f"alerts@{SUBDOMAIN}",
                "text": "No key is configured for this subdomain.",
            },
            structure=PLAIN,
            text="No key is configured for this subdomain.",
            html=None,
            addresses={"From": [("", f"alerts@{SUBDOMAIN}")], "To": [("", "ann@example.net")]},
            headers={"Subject": "Unsigned"},
            envelope_from=f"alerts@{SUBDOMAIN}",
            envelope_to=["ann@example.net"],
        ),
    ]


def _address_cases() -> list[Case]:
    people_to = _parsed_people("to", 60, "example.net")
    people_cc = _parsed_people("cc", 50, "example.org")
    people_bcc = _parsed_people("bcc", 40, "example.com")
    return [
        Case(
            name="idn-domains",
            send={
                "to": ["Jörg <jorg@bücher.example>", "x@例え.テスト"],
                "cc": "Ünï <uni@münchen.example>",
                "reply_to": f"help@{ED_DOMAIN}",
                "subject": "IDN",
                "from_": f"Bücherei <info@{ED_DOMAIN}>",
                "text": "Domains travel as punycode.",
            },
            structure=PLAIN,
            text="Domains travel as punycode.",
            html=None,
            addresses={
                "From": [("Bücherei", f"info@{ED_DOMAIN_ASCII}")],
                "To": [("Jörg", f"jorg@{ED_DOMAIN_ASCII}"), ("", f"x@{JP_DOMAIN_ASCII}")],
                "Cc": [("Ünï", "uni@xn--mnchen-3ya.example")],
                "Reply-To": [("", f"help@{ED_DOMAIN_ASCII}")],
            },
            headers={"Subject": "IDN"},
            envelope_from=f"info@{ED_DOMAIN_ASCII}",
            envelope_to=[
                f"jorg@{ED_DOMAIN_ASCII}",
                f"x@{JP_DOMAIN_ASCII}",
                "uni@xn--mnchen-3ya.example",
            ],
            signed_by=ED_DOMAIN_ASCII,
        ),
        Case(
            # SMTPUTF8: the whole message goes raw UTF-8, addresses unchanged
            name="non-ascii-local-part-recipient",
            send={
                "to": "Jörg <jörg@bücher.example>",
                "cc": "ann@example.net",
                "subject": "Grüße",
                "from_": f"Shop <shop@{RSA_DOMAIN}>",
                "text": "Hallo Jörg\n",
            },
            structure=PLAIN,
            text="Hallo Jörg\n",
            html=None,
            addresses={
                "From": [("Shop", f"shop@{RSA_DOMAIN}")],
                "To": [("Jörg", "jörg@bücher.example")],
                "Cc": [("", "ann@example.net")],
            },
            headers={"Subject": "Grüße"},
            envelope_from=f"shop@{RSA_DOMAIN}",
            envelope_to=["jörg@bücher.example", "ann@example.net"],
            signed_by=RSA_DOMAIN,
            smtputf8=True,
        ),
        Case(
            name="non-ascii-local-part-sender",
            send={
                "to": "用户@例え.テスト",
                "subject": "Δοκιμή",
                "from_": f"José <josé@{ED_DOMAIN}>",
                "text": "Γεια σου\n",
                "html": "<p>Γεια σου</p>",
            },
            structure=alternative(PLAIN, HTML),
            text="Γεια σου\n",
            html="<p>Γεια σου</p>",
            addresses={"From": [("José", f"josé@{ED_DOMAIN}")], "To": [("", "用户@例え.テスト")]},
            headers={"Subject": "Δοκιμή"},
            envelope_from=f"josé@{ED_DOMAIN}",
            envelope_to=["用户@例え.テスト"],
            signed_by=ED_DOMAIN_ASCII,
            smtputf8=True,
        ),
        Case(
            name="many-recipients",
            send={
                "to": _people("to", 60, "example.net"),
                "cc": _people("cc", 50, "example.org"),
                "bcc": _people("bcc", 40, "example.com"),
                "subject": "To 150 people",
                "from_": f"List <list@{NO_KEY_DOMAIN}>",
                "text": "Bcc recipients are in the envelope only.",
            },
            structure=PLAIN,
            text="Bcc recipients are in the envelope only.",
            html=None,
            addresses={
                "From": [("List", f"list@{NO_KEY_DOMAIN}")],
                "To": people_to,
                "Cc": people_cc,
            },
            headers={"Subject": "To 150 people"},
            envelope_from=f"list@{NO_KEY_DOMAIN}",
            envelope_to=_bare(people_to) + _bare(people_cc) + _bare(people_bcc),
        ),
        Case(
            name="bcc-only",
            send={
                "bcc": ["hidden1@example.net", "Hidden Zwei <hidden2@example.org>"],
                "subject": "Nobody in To",
                "from_": f"shop@{RSA_DOMAIN}",
                "text": "Only the envelope names us.",
            },
            structure=PLAIN,
            text="Only the envelope names us.",
            html=None,
            addresses={"From": [("", f"shop@{RSA_DOMAIN}")]},
            headers={"Subject": "Nobody in To"},
            envelope_from=f"shop@{RSA_DOMAIN}",
            envelope_to=["hidden1@example.net", "hidden2@example.org"],
            signed_by=RSA_DOMAIN,
        ),
        Case(
            name="custom-headers",
            send={
                "to": "ann@example.net",
                "reply_to": ["Équipe <team@example.com>", "Другой <other@example.org>"],
                "subject": "Headers",
                "from_": f"news@{RSA_DOMAIN}",
                "text": "See the headers.",
                "headers": {
                    "X-Campaign": "Été 2026 — ünïcode ✓",
                    "List-Unsubscribe": "<https://shop.example/u/1>, <mailto:u@shop.example>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                    "X-Long-Value": " ".join(["folded"] * 200),
                    "X-Entity-Ref-ID": "ord-42",
                },
            },
            structure=PLAIN,
            text="See the headers.",
            html=None,
            addresses={
                "From": [("", f"news@{RSA_DOMAIN}")],
                "To": [("", "ann@example.net")],
                "Reply-To": [("Équipe", "team@example.com"), ("Другой", "other@example.org")],
            },
            headers={
                "Subject": "Headers",
                "X-Campaign": "Été 2026 — ünïcode ✓",
                "List-Unsubscribe": "<https://shop.example/u/1>, <mailto:u@shop.example>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "X-Long-Value": " ".join(["folded"] * 200),
                "X-Entity-Ref-ID": "ord-42",
            },
            envelope_from=f"news@{RSA_DOMAIN}",
            envelope_to=["ann@example.net"],
            signed_by=RSA_DOMAIN,
        ),
    ]


def _body_cases() -> list[Case]:
    shop = f"Shop <shop@{RSA_DOMAIN}>"
    common: dict[str, Any] = {
        "addresses": {"From": [("Shop", f"shop@{RSA_DOMAIN}")], "To": [("", "ann@example.net")]},
        "envelope_from": f"shop@{RSA_DOMAIN}",
        "envelope_to": ["ann@example.net"],
        "signed_by": RSA_DOMAIN,
    }
    return [
        Case(
            name="html-only",
            send={"to": "ann@example.net", "subject": "HTML", "from_": shop, "html": HTML_ONLY},
            # documented: a text alternative is derived from an HTML-only body
            structure=alternative(PLAIN, HTML),
            text=HTML_ONLY_TEXT,
            html=HTML_ONLY,
            headers={"Subject": "HTML"},
            **common,
        ),
        Case(
            name="text-only-long-lines",
            send={"to": "ann@example.net", "subject": "Long", "from_": shop, "text": LONG_TEXT},
            structure=PLAIN,
            text=LONG_TEXT,
            html=None,
            headers={"Subject": "Long"},
            **common,
        ),
        Case(
            name="html-long-lines",
            send={
                "to": "ann@example.net",
                "subject": "Long HTML",
                "from_": shop,
                "text": "short",
                "html": LONG_HTML,
            },
            structure=alternative(PLAIN, HTML),
            text="short",
            html=LONG_HTML,
            headers={"Subject": "Long HTML"},
            **common,
        ),
    ]


def _attachment_cases(directory: Path) -> list[Case]:
    shop = f"Shop <shop@{RSA_DOMAIN}>"
    common: dict[str, Any] = {
        "addresses": {"From": [("Shop", f"shop@{RSA_DOMAIN}")], "To": [("", "ann@example.net")]},
        "envelope_from": f"shop@{RSA_DOMAIN}",
        "envelope_to": ["ann@example.net"],
        "signed_by": RSA_DOMAIN,
    }
    on_disk = directory / "report.pdf"
    on_disk.write_bytes(PDF[::-1])
    return [
        Case(
            name="documents",
            send={
                "to": "ann@example.net",
                "subject": "Documents",
                "from_": shop,
                "text": "Three files.",
                "html": "<p>Three files.</p>",
                "attachments": [
                    Attachment("invoice.pdf", PDF),
                    Attachment("data.csv", CSV),
                    Attachment("archive.zip", ZIP),
                ],
            },
            structure=mixed(
                alternative(PLAIN, HTML), "application/pdf", "text/csv", "application/zip"
            ),
            text="Three files.",
            html="<p>Three files.</p>",
            headers={"Subject": "Documents"},
            attachments=[
                Expected("invoice.pdf", "application/pdf", PDF),
                Expected("data.csv", "text/csv", CSV),
                Expected("archive.zip", "application/zip", ZIP),
            ],
            **common,
        ),
        Case(
            name="odd-files",
            send={
                "to": "ann@example.net",
                "subject": "Odd files",
                "from_": shop,
                "text": "Bytes must survive.",
                "attachments": [
                    Attachment("latin1.txt", LATIN1_TEXT),
                    Attachment("empty.bin", b""),
                    Attachment("order.data", JSON, content_type="application/json"),
                    # documented: a compressed file is sent as what it is on disk
                    Attachment("logs.txt.gz", GZIP_BYTES),
                ],
            },
            structure=mixed(
                PLAIN,
                PLAIN,
                "application/octet-stream",
                "application/json",
                "application/octet-stream",
            ),
            text="Bytes must survive.",
            html=None,
            headers={"Subject": "Odd files"},
            attachments=[
                Expected("latin1.txt", "text/plain", LATIN1_TEXT),
                Expected("empty.bin", "application/octet-stream", b""),
                Expected("order.data", "application/json", JSON),
                Expected("logs.txt.gz", "application/octet-stream", GZIP_BYTES),
            ],
            **common,
        ),
        Case(
            name="three-megabytes",
            send={
                "to": "ann@example.net",
                "subject": "Big",
                "from_": shop,
                "text": "A large binary.",
                "attachments": [Attachment("blob.bin", BLOB_3MB)],
            },
            structure=mixed(PLAIN, "application/octet-stream"),
            text="A large binary.",
            html=None,
            headers={"Subject": "Big"},
            attachments=[Expected("blob.bin", "application/octet-stream", BLOB_3MB)],
            **common,
        ),
        Case(
            name="non-ascii-filenames",
            send={
                "to": "ann@example.net",
                "subject": "Fichiers",
                "from_": shop,
                "text": "Names in four scripts.",
                "attachments": [
                    Attachment("résumé – 2026.pdf", PDF[:5000]),
                    Attachment("отчёт за май.csv", CSV),
                    Attachment("写真.png", CHART),
                    Attachment("😀 notes.txt", "smile 😀\n".encode()),
                ],
            },
            structure=mixed(PLAIN, "application/pdf", "text/csv", "image/png", PLAIN),
            text="Names in four scripts.",
            html=None,
            headers={"Subject": "Fichiers"},
            attachments=[
                Expected("résumé – 2026.pdf", "application/pdf", PDF[:5000]),
                Expected("отчёт за май.csv", "text/csv", CSV),
                Expected("写真.png", "image/png", CHART),
                Expected("😀 notes.txt", "text/plain", "smile 😀\n".encode()),
            ],
            **common,
        ),
        Case(
            name="attachment-forms",
            send={
                "to": "ann@example.net",
                "subject": "Path, mapping, object",
                "from_": shop,
                "text": "Three ways to attach.",
                "attachments": [
                    on_disk,
                    {"filename": "mapping.gif", "content": GIF},
                    Attachment("object.csv", CSV, content_type="text/csv"),
                ],
            },
            structure=mixed(PLAIN, "application/pdf", "image/gif", "text/csv"),
            text="Three ways to attach.",
            html=None,
            headers={"Subject": "Path, mapping, object"},
            attachments=[
                Expected("report.pdf", "application/pdf", PDF[::-1]),
                Expected("mapping.gif", "image/gif", GIF),
                Expected("object.csv", "text/csv", CSV),
            ],
            **common,
        ),
        Case(
            name="inline-images",
            send={
                "to": "ann@example.net",
                "subject": "Inline",
                "from_": shop,
                "text": "See the chart.",
                "html": INLINE_HTML,
                "attachments": [
                    Attachment("chart.png", CHART, inline=True, content_id="chart@example.com"),
                    # the content id defaults to the file name
                    Attachment("pixel.gif", GIF, inline=True),
                ],
            },
            structure=alternative(PLAIN, related(HTML, "image/png", "image/gif")),
            text="See the chart.",
            html=INLINE_HTML,
            headers={"Subject": "Inline"},
            attachments=[
                Expected(
                    "chart.png", "image/png", CHART, inline=True, content_id="chart@example.com"
                ),
                Expected("pixel.gif", "image/gif", GIF, inline=True, content_id="pixel.gif"),
            ],
            **common,
        ),
        Case(
            name="html-only-inline-and-attached",
            send={
                "to": "ann@example.net",
                "subject": "Both kinds",
                "from_": shop,
                "html": '<p>Logo:</p><img src="cid:logo@example.com" alt="logo">',
                "attachments": [
                    Attachment("invoice.pdf", PDF),
                    Attachment("logo.png", LOGO, inline=True, content_id="logo@example.com"),
                ],
            },
            structure=mixed(alternative(PLAIN, related(HTML, "image/png")), "application/pdf"),
            text="Logo:\n\nlogo",
            html='<p>Logo:</p><img src="cid:logo@example.com" alt="logo">',
            headers={"Subject": "Both kinds"},
            attachments=[
                Expected("logo.png", "image/png", LOGO, inline=True, content_id="logo@example.com"),
                Expected("invoice.pdf", "application/pdf", PDF),
            ],
            **common,
        ),
    ]


def _template_cases() -> list[Case]:
    common: dict[str, Any] = {
        "addresses": {"From": [("Shop", f"shop@{RSA_DOMAIN}")], "To": [("", "ann@example.net")]},
        "envelope_from": f"shop@{RSA_DOMAIN}",
        "envelope_to": ["ann@example.net"],
        "signed_by": RSA_DOMAIN,
    }
    shop = f"Shop <shop@{RSA_DOMAIN}>"
    return [
        Case(
            name="template-css-inlined",
            send={
                "to": "ann@example.net",
                "from_": shop,
                "template": "receipt",
                "context": {"name": "<b>Zoë</b> & co", "order": 42},
                "attachments": [
                    Attachment("logo.png", LOGO, inline=True, content_id="logo@example.com")
                ],
            },
            structure=alternative(PLAIN, related(HTML, "image/png")),
            # documented: autoescape in HTML only, text derived from the HTML, CSS inlined
            text="Merci <b>Zoë</b> & co\n\nCommande n°42\n\nlogo",
            html=(
                "<html><head></head><body><h1>Merci &lt;b&gt;Zoë&lt;/b&gt; &amp; co</h1>"
                '<p style="color: #c00;">Commande n°42</p>'
                '<img src="cid:logo@example.com" alt="logo"></body></html>'
            ),
            headers={"Subject": "Reçu n°42 — <b>Zoë</b> & co"},
            attachments=[
                Expected("logo.png", "image/png", LOGO, inline=True, content_id="logo@example.com")
            ],
            **common,
        ),
        Case(
            name="template-text-and-html",
            send={
                "to": "ann@example.net",
                "from_": shop,
                "template": "digest",
                "context": {"user": "Јована", "items": ["één", "二", "trois & <quatre>"]},
                "headers": {"X-Digest": "weekly"},
            },
            structure=alternative(PLAIN, HTML),
            text="Hello Јована,\n- één\n- 二\n- trois & <quatre>\n",
            html="<ul><li>één</li><li>二</li><li>trois &amp; &lt;quatre&gt;</li></ul>",
            headers={"Subject": "Résumé for Јована", "X-Digest": "weekly"},
            **common,
        ),
    ]


def build_corpus(directory: Path) -> list[Case]:
    """Every corpus message; ``directory`` receives the files attached by path."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus = [
        *_basic_cases(),
        *_address_cases(),
        *_body_cases(),
        *_attachment_cases(directory),
        *_template_cases(),
    ]
    assert len({case.name for case in corpus}) == len(corpus), "case names must be unique"
    return corpus


# receiving side --------------------------------------------------------------------------


def structure_of(part: MIMEPart) -> Tree:
    """The MIME tree of a parsed message, as the corpus writes it."""
    if not part.is_multipart():
        return part.get_content_type()
    return (part.get_content_type(), tuple(structure_of(p) for p in part.iter_parts()))


def _leaves(part: MIMEPart) -> list[MIMEPart]:
    if not part.is_multipart():
        return [part]
    return [leaf for child in part.iter_parts() for leaf in _leaves(child)]


def decoded_text(part: MIMEPart | None) -> str:
    """A text part's content, with the wire's CRLF line ends (which the parser keeps) as LF."""
    assert part is not None, "no such part"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def _as_sent(body: str) -> str:
    # EmailMessage.set_content ends the last line of a text body with a line break.
    return body if body.endswith("\n") else body + "\n"


def parse(data: bytes) -> EmailMessage:
    """The message as a receiver parses it (modern policy: decoded headers, typed parts)."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _payload(part: MIMEPart) -> bytes:
    content = part.get_payload(decode=True)
    assert isinstance(content, bytes)
    return content


def assert_body(case: Case, message: EmailMessage) -> None:
    """Same parts, same decoded text and HTML, same attachment bytes, names and types."""
    assert structure_of(message) == case.structure
    leaves = _leaves(message)
    bodies = [leaf for leaf in leaves if leaf.get_filename() is None]
    files = [leaf for leaf in leaves if leaf.get_filename() is not None]
    texts = [decoded_text(leaf) for leaf in bodies if leaf.get_content_type() == PLAIN]
    htmls = [decoded_text(leaf) for leaf in bodies if leaf.get_content_type() == HTML]
    assert texts == ([] if case.text is None else [_as_sent(case.text)])
    assert htmls == ([] if case.html is None else [_as_sent(case.html)])
    received = [
        Expected(
            filename=str(leaf.get_filename()),
            content_type=leaf.get_content_type(),
            content=_payload(leaf),
            inline=leaf.get_content_disposition() == "inline",
            content_id=str(leaf["Content-ID"]).strip("<>") if leaf["Content-ID"] else None,
        )
        for leaf in files
    ]
    # by digest: a 3 MB mismatch printed in full helps nobody
    assert [r.summary() for r in received] == [e.summary() for e in case.attachments]


def _utf8(text: str) -> str:
    # message_from_bytes reads header bytes as ASCII with surrogate escapes; str(header) turns
    # them back into UTF-8, but the parsed Address fields keep the escapes. RFC 6532 says such
    # headers are UTF-8, so undo the escapes as a receiver would.
    return text.encode("utf-8", "surrogateescape").decode("utf-8")


def assert_headers(case: Case, message: EmailMessage) -> None:
    """The same address lists and header values; no Bcc header."""
    present = {name for name in ("From", "To", "Cc", "Reply-To") if name in message}
    assert present == set(case.addresses)
    for name, expected in case.addresses.items():
        assert len(message.get_all(name, [])) == 1, f"one {name} header"
        parsed = [(_utf8(a.display_name), _utf8(a.addr_spec)) for a in message[name].addresses]
        assert parsed == list(expected)
    for name, value in case.headers.items():
        assert str(message[name]) == value
    assert "Bcc" not in message
    assert "Resent-Bcc" not in message


def assert_wire_format(case: Case, data: bytes) -> None:
    """Lines within SMTP's limit, headers folded, raw UTF-8 only in SMTPUTF8 messages."""
    header_block, _, _ = data.partition(b"\r\n\r\n")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    # folded for readers: no header line longer than 78 characters (RFC 5322 §2.1.1)
    assert all(len(line) <= 78 for line in header_block.split(b"\r\n")), case.name
    assert header_block.isascii() != case.smtputf8


def tamper_body(data: bytes) -> bytes:
    """``data`` with one byte of the body changed (relaxed canonicalisation only folds spaces)."""
    start = data.index(b"\r\n\r\n") + 4
    index = next(i for i in range(start, len(data)) if data[i : i + 1] not in b" \t\r\n")
    replacement = b"C" if data[index : index + 1] == b"B" else b"B"
    return data[:index] + replacement + data[index + 1 :]


def assert_dkim(case: Case, data: bytes, dnsfunc: Callable[..., bytes | None]) -> None:
    """Signed mail verifies against the published key and stops verifying when tampered."""
    signatures = [v for n, v in dkim.DKIM(data).headers if n.lower() == b"dkim-signature"]
    if case.signed_by is None:
        assert signatures == []
        return
    assert len(signatures) == 1
    tags = dict(
        tag.strip().split(b"=", 1) for tag in b"".join(signatures[0].split()).split(b";") if tag
    )
    assert tags[b"d"].decode() == case.signed_by
    assert dkim.verify(data, dnsfunc=dnsfunc)
    assert not dkim.verify(tamper_body(data), dnsfunc=dnsfunc)


def assert_arrived_as_sent(
    case: Case, received: ReceivedMessage, dnsfunc: Callable[..., bytes | None]
) -> None:
    """Every property of a received corpus message that the caller asked for."""
    assert received.mail_from == case.envelope_from
    assert received.rcpt_tos == list(case.envelope_to)
    message = parse(received.data)
    assert_headers(case, message)
    assert_body(case, message)
    assert_wire_format(case, received.data)
    assert_dkim(case, received.data, dnsfunc)


# template attacks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """A hostile template part and the stage that must refuse it.

    ``refused_at`` is ``"save"`` (it does not compile) or ``"send"`` (rendering it fails,
    within the limits); ``"contained"`` attacks render harmlessly to ``output``.
    """

    name: str
    source: str
    refused_at: str
    part: str = "text"
    context: Mapping[str, Any] = field(default_factory=lambda: {"x": "abc"})
    output: str | None = None


# What a leaked Python object looks like when printed.
LEAK_MARKERS = ("<class ", "<function ", "<built-in ", "<module ", "<bound method ", "<frame ")


def injection_corpus(sentinel: Path) -> list[Attack]:
    """Template attacks; the ones that would run a command try to create ``sentinel``."""
    touch = f"touch {sentinel}"
    return [
        Attack("mro-subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "send"),
        Attack(
            "cycler-globals", f"{{{{ cycler.__init__.__globals__.os.system('{touch}') }}}}", "send"
        ),
        Attack(
            "joiner-popen",
            f"{{{{ joiner.__init__.__globals__['os'].popen('{touch}').read() }}}}",
            "send",
            part="html",
        ),
        Attack("template-reference", "{{ self._TemplateReference__context }}", "send"),
        Attack("format-globals", "{{ '{0.__class__.__init__.__globals__}'.format(x) }}", "send"),
        Attack("format-via-attr", "{{ ('{0.__class__}'|attr('format'))(x) }}", "send"),
        Attack("attr-filter", "{{ x|attr('__class__') }}", "send", part="html"),
        Attack("escaped-attr-name", "{{ x|attr('\\x5f\\x5fclass\\x5f\\x5f') }}", "send"),
        Attack(
            "loop-internals",
            "{% for i in range(3) %}{{ loop.__class__.__mro__ }}{% endfor %}",
            "send",
        ),
        Attack(
            "namespace-globals", "{% set ns = namespace() %}{{ ns.__init__.__globals__ }}", "send"
        ),
        Attack("flask-style-globals", "{{ request.application.__globals__ }}", "send"),
        Attack("generator-frame", "{{ (y for y in range(3)).gi_frame.f_globals }}", "save"),
        Attack("import-os", "{% import os %}{{ os }}", "save"),
        Attack("include-file", "{% include '/etc/passwd' %}", "send"),
        Attack("huge-range", "{{ range(10**9)|list }}", "send"),
        Attack(
            "nested-ranges",
            "{% for a in range(10000) %}{% for b in range(10000) %}{{ b }}{% endfor %}{% endfor %}",
            "send",
        ),
        Attack("string-times-huge", "{{ 'a' * 10**10 }}", "send", part="html"),
        Attack("list-times-huge", "{{ [1] * 10**9 }}", "send"),
        Attack("center-huge", "{{ 'a'|center(10**9) }}", "send"),
        # Jinja's ** is left-associative: 10**10**10 is (10**10)**10; the parentheses ask for
        # the number an attacker means
        Attack("power-tower", "{{ 10 ** (10 ** 10) }}", "send"),
        Attack("printf-width", "{{ '%*s' % (10**9, 'x') }}", "send"),
        Attack("format-width", "{{ '{0:>1000000000}'.format(x) }}", "send"),
        Attack("concat-huge", "{% set s = 'a' * 999999 %}{{ s ~ s ~ s }}", "send"),
        Attack("shared-references", "{{ {}.fromkeys(range(10000), 'a' * 10000) }}", "send"),
        Attack("recursive-macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "send"),
        Attack(
            "exponential-macro",
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
            "{{ f(40) }}",
            "send",
        ),
        Attack("left-power", "{{ 10**10**10 }}", "contained", output="1" + "0" * 100),
        Attack(
            "map-attribute",
            "{{ [x]|map(attribute='__class__')|list }}",
            "contained",
            output="[Undefined]",
        ),
    ]
