"""mime_fast writes the very bytes EmailMessage would: compared over a generated corpus."""

from __future__ import annotations

import random
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from email import quoprimime
from email.headerregistry import Address
from email.policy import SMTP

import pytest

from postroom import mime, mime_fast
from postroom.addresses import format_address
from postroom.attachments import Attachment, check_attachments
from postroom.messages import Message
from postroom.mime import WireAddress, build_email, build_envelope

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

WORDS = {
    "ascii": [
        "Hello",
        "order",
        "#12345",
        "shipped",
        "a",
        "Re:",
        "[Alert]",
        "100%",
        "x-y",
        "O'Neil",
    ],
    "latin1": ["Grüße", "Zoë", "café", "Señor", "façade", "Ærø", "naïve", "Düsseldorf"],
    "cyrillic": ["Привет", "заказ", "отправлен", "Москва", "ёж", "Иванова-Смирнова"],
    "cjk": ["注文", "発送しました", "東京", "您好", "订单已发货", "한국어"],
    "emoji": ["✓", "🎉", "👍🏽", "🚚", "❤️", "😀😀"],
    "odd": ["=?", "?=", "a=?b", "\xa0", "\u3000", "x\ty", "", "(c)", '"q"', "a\\b", "1.", "<x>"],
}
SCRIPTS = ["ascii", "latin1", "cyrillic", "cjk", "emoji"]
LONG_WORD = "https://example.com/track?id=" + "abcdef0123" * 6


def phrase(rng: random.Random, words: int, *, odd: float = 0.03) -> str:
    """Words from one or two scripts, mostly single-spaced, now and then something unusual."""
    scripts = rng.sample(SCRIPTS, rng.choice([1, 1, 2]))
    if rng.random() < 0.5 and "ascii" not in scripts:
        scripts.append("ascii")  # real subjects mix ASCII words (numbers, names) in
    parts = []
    for _ in range(words):
        if rng.random() < odd:
            parts.append(rng.choice(WORDS["odd"]))
        elif rng.random() < 0.01:
            parts.append(LONG_WORD)
        else:
            parts.append(rng.choice(WORDS[rng.choice(scripts)]))
        parts.append(rng.choice([" "] * 20 + ["  ", ", ", " - "]))
    text = "".join(parts[:-1])
    if rng.random() < 0.02:
        text = " " + text
    if rng.random() < 0.02:
        text += " "
    return text


def display_name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.25:
        return ""
    if roll < 0.35:  # needs quoting: a special in the name
        return rng.choice(["Acme, Inc.", "J. Smith", "Shop (EU)", 'The "Best" Shop', "Zoë, Inc."])
    return phrase(rng, rng.choice([1, 2, 2, 3, 4, 8]), odd=0.01).strip()


def address(rng: random.Random, *, utf8_local: float = 0.0) -> str:
    local = rng.choice(
        ["ann", "bob.smith", "x+tag", "o'neil", "bounce=a.b", "very.long.local.part"]
    )
    if rng.random() < utf8_local:
        local = "jörg"
    domain = rng.choice(["example.com", "mail.example.org", "bücher.example", "例え.jp"])
    name = display_name(rng)
    if any(c in name for c in "\t\xa0\u3000"):
        name = name.replace("\t", " ")
    return format_address(name.strip(), f"{local}@{domain}")


def body(rng: random.Random, *, html: bool) -> str:
    if rng.random() < 0.05:
        return rng.choice(["", " ", "\n", "\r\n\r\n", "x"])
    lines = []
    for _ in range(rng.choice([1, 3, 12, 40, 80])):
        roll = rng.random()
        if roll < 0.05:
            line = rng.choice(["From here on", ".", "..dot", "--", "-- ", "From "])
        elif roll < 0.15:
            line = phrase(rng, rng.randint(20, 60), odd=0.0)  # long: past 78 bytes
        elif roll < 0.2:
            line = ""
        else:
            line = phrase(rng, rng.randint(1, 12), odd=0.0)
        if rng.random() < 0.1:
            line += " " * rng.randint(1, 3)  # trailing blanks must survive
        if html and rng.random() < 0.5:
            line = f"<p>{line}</p>"
        lines.append(line)
    separators = ["\n"] * 6 + ["\r\n"] * 3 + ["\r", "\x0c", "\u2028", "\x85"]
    text = "".join(line + rng.choice(separators) for line in lines)
    return text if rng.random() < 0.8 else text.rstrip("\r\n")


def custom_headers(rng: random.Random) -> dict[str, str]:
    headers = {}
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        name = rng.choice(
            ["X-Campaign", "List-Unsubscribe", "X-Entity-Ref-ID", "X-Mailer", "Keywords"]
        )
        if name == "List-Unsubscribe":
            headers[name] = f"<{LONG_WORD[: rng.randint(20, len(LONG_WORD))]}>"
        else:
            headers[name] = phrase(rng, rng.randint(1, 6))
    return headers


MESSAGE_ID_DOMAINS = ["example.com", "xn--bcher-kva.example"]


def random_message(rng: random.Random, index: int) -> Message:
    text = body(rng, html=False)
    html = body(rng, html=True)
    shape = rng.choice(["text", "html", "both", "both"])
    subject_words = rng.choice([0, 1, 3, 6, 10, 16, 30])
    return Message(
        id=f"01CORPUS{index:018d}",
        from_addr=address(rng),
        to=[address(rng, utf8_local=0.03) for _ in range(rng.choice([1, 1, 1, 2, 4]))],
        cc=[address(rng) for _ in range(rng.choice([0, 0, 0, 1, 2]))],
        bcc=[address(rng) for _ in range(rng.choice([0, 0, 1]))],
        reply_to=[address(rng) for _ in range(rng.choice([0, 0, 1]))],
        subject=phrase(rng, subject_words),
        text=None if shape == "html" else text,
        html=None if shape == "text" else html,
        headers=custom_headers(rng),
        message_id_header=f"<01CORPUS{index:018d}@{rng.choice(MESSAGE_ID_DOMAINS)}>",
    )


def random_now(rng: random.Random) -> datetime:
    zone = rng.choice(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    )
    return datetime(2026, 1, 1, tzinfo=zone) + timedelta(seconds=rng.uniform(0, 3e7))


@contextmanager
def seeded_global_random(seed: int):
    """Both paths draw the multipart boundary from the module-level ``random``; seed it alike."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def slow_bytes(message: Message, attachments=(), *, now: datetime) -> bytes:
    wires = [WireAddress.parse(a) for a in (message.from_addr, *message.to, *message.cc)]
    wires += [WireAddress.parse(a) for a in (*message.bcc, *message.reply_to)]
    smtputf8 = any(w.smtputf8 for w in wires)
    return build_email(message, attachments, now=now, smtputf8=smtputf8).as_bytes()


def both_paths(message: Message, *, now: datetime, seed: int) -> tuple[bytes, bytes]:
    with seeded_global_random(seed):
        fast = build_envelope(message, now=now).data
    with seeded_global_random(seed):
        slow = slow_bytes(message, now=now)
    return fast, slow


def takes_fast_path(message: Message, *, now: datetime) -> bool:
    sender = WireAddress.parse(message.from_addr)
    fields = [("From", [sender])] + [
        (name, [WireAddress.parse(a) for a in values])
        for name, values in (("To", message.to), ("Cc", message.cc), ("Reply-To", message.reply_to))
    ]
    if any(w.smtputf8 for _, wires in fields for w in wires):
        return False
    address_headers = [(name, [(w.name, w.addr) for w in wires]) for name, wires in fields]
    with seeded_global_random(0):
        return mime_fast.build_bytes(message, address_headers, now=now) is not None


CORPUS_SIZE = 2400


def test_generated_corpus_is_byte_identical_on_both_paths():
    rng = random.Random(20261123)
    fast_count = 0
    for index in range(CORPUS_SIZE):
        message = random_message(rng, index)
        now = random_now(rng)
        fast, slow = both_paths(message, now=now, seed=index)
        assert fast == slow, f"message {index}: {message.subject!r}"
        fast_count += takes_fast_path(message, now=now)
    # the only whole-message fallback in this corpus is a non-ASCII local part (SMTPUTF8)
    assert fast_count > 0.9 * CORPUS_SIZE


def test_the_date_header_follows_each_message_s_time_and_zone():
    message = corpus_message(subject="When")
    berlin = timezone(timedelta(hours=1))
    moments = [
        NOW,
        NOW.astimezone(berlin),  # the same instant, printed in another zone
        NOW + timedelta(microseconds=999_999),  # within the same second
        NOW + timedelta(seconds=1),
        NOW,
    ]
    dates = []
    for index, moment in enumerate(moments):
        fast, slow = both_paths(message, now=moment, seed=index)
        assert fast == slow
        dates.append(next(line for line in fast.split(b"\r\n") if line.startswith(b"Date: ")))
    assert dates == [
        b"Date: Mon, 23 Nov 2026 12:00:00 +0000",
        b"Date: Mon, 23 Nov 2026 13:00:00 +0100",
        b"Date: Mon, 23 Nov 2026 12:00:00 +0000",
        b"Date: Mon, 23 Nov 2026 12:00:01 +0000",
        b"Date: Mon, 23 Nov 2026 12:00:00 +0000",
    ]


def test_common_shapes_take_the_fast_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("EmailMessage was used")

    monkeypatch.setattr(mime, "build_email", refuse)
    shapes = [
        {"text": "Hello\n", "html": None},
        {"text": None, "html": "<p>Hello</p>"},
        {"text": "Hello\n" + "ü" * 100, "html": "<p>" + "x" * 300 + "</p>"},
    ]
    for index, fields in enumerate(shapes):
        message = Message(
            id="01FAST",
            from_addr="Zoë Sender <zoe@example.com>",
            to=["Ann Smith <ann@example.com>", "b@bücher.example"],
            cc=['"Acme, Inc." <c@example.com>'],
            bcc=["hidden@example.com"],
            reply_to=["support@example.com"],
            subject="Ваш заказ №12345 отправлен и будет доставлен в четверг 🚚",
            headers={"X-Campaign": "spring ✿", "List-Unsubscribe": "<https://example.com/u/1>"},
            message_id_header="<01FAST@example.com>",
            **fields,
        )
        assert build_envelope(message, now=NOW).data
        monkeypatch.undo()
        fast, slow = both_paths(message, now=NOW, seed=index)
        assert fast == slow
        monkeypatch.setattr(mime, "build_email", refuse)


def corpus_message(**fields) -> Message:
    values = {
        "id": "01SLOW",
        "from_addr": "Shop <shop@example.com>",
        "to": ["ann@example.com"],
        "cc": [],
        "bcc": [],
        "reply_to": [],
        "subject": "Hi",
        "text": "Hello",
        "html": "<p>Hello</p>",
        "headers": {},
        "message_id_header": "<01SLOW@example.com>",
        **fields,
    }
    return Message(**values)


@pytest.mark.parametrize(
    ("fields", "attachments"),
    [
        ({}, [Attachment("ticket.pdf", b"%PDF-1.7")]),
        ({}, [Attachment("logo.png", b"\x89PNG\r\n", inline=True, content_id="logo")]),
        ({"to": ["Jörg <jörg@example.de>"]}, []),
        ({"reply_to": ["jörg@example.de"]}, []),
    ],
    ids=["attachment", "inline-image", "smtputf8-recipient", "smtputf8-reply-to"],
)
def test_attachments_inline_images_and_smtputf8_use_email_message(monkeypatch, fields, attachments):
    def refuse(*args, **kwargs):
        raise AssertionError("the fast path was tried")

    monkeypatch.setattr(mime_fast, "build_bytes", refuse)
    checked = check_attachments(attachments, max_attachment_bytes=10**6)
    message = corpus_message(**fields)
    with seeded_global_random(1):
        data = build_envelope(message, checked, now=NOW).data
    with seeded_global_random(1):
        assert data == slow_bytes(message, checked, now=NOW)


@pytest.mark.parametrize(
    "fields",
    [
        {"headers": {"Content-Language": "de"}},  # set_content drops it
        {"headers": {"Keywords": "a", "Comments": "b", "Sender": "s@example.com"}},  # registered
        {"text": None, "html": None},
        {"subject": "two\nlines"},  # EmailMessage refuses it, and must be the one to say so
    ],
    ids=["content-header", "registered-header", "no-body", "line-break"],
)
def test_shapes_outside_the_fast_path_are_declined(fields):
    message = corpus_message(**fields)
    assert not takes_fast_path(message, now=NOW)


def test_a_line_break_in_the_subject_is_still_refused():
    with pytest.raises(ValueError, match="linefeed"):
        build_envelope(corpus_message(subject="two\nlines"), now=NOW)


def stdlib_fold(name: str, value) -> str:
    return SMTP.header_factory(name, value).fold(policy=SMTP)


def is_odd(value: str) -> bool:
    """Holds something the fast folder hands to the stdlib on purpose."""
    return any(odd and odd in value for odd in WORDS["odd"]) or LONG_WORD in value


def test_unstructured_headers_fold_exactly_and_mostly_without_the_stdlib(monkeypatch):
    rng = random.Random(7)
    delegated = []
    real = mime_fast._stdlib_fold.__wrapped__
    monkeypatch.setattr(mime_fast, "_stdlib_fold", lambda n, v: delegated.append(v) or real(n, v))
    values = [phrase(rng, rng.choice([1, 2, 4, 8, 12, 20, 40])) for _ in range(4000)]
    values += ["a" * n for n in range(60, 76)] + ["ü" * n for n in range(1, 80, 3)]
    for value in values:
        for name in ("Subject", "X-Campaign-Identifier-Long"):
            assert mime_fast.fold_unstructured(name, value) == stdlib_fold(name, value), value
    # Beyond the deliberate cases, only a stdlib quirk declines: an encoded run that had to
    # start on a fresh line and is then merged with a later word.
    assert sum(not is_odd(value) for value in delegated) < 0.01 * 2 * len(values)


def test_address_headers_fold_exactly_and_simple_names_without_the_stdlib(monkeypatch):
    rng = random.Random(11)
    delegated = []
    real = mime_fast._stdlib_fold.__wrapped__
    monkeypatch.setattr(mime_fast, "_stdlib_fold", lambda n, v: delegated.append(v) or real(n, v))
    simple = 0
    for _ in range(3000):
        pairs = tuple(
            (wire.name, wire.addr)
            for wire in (
                WireAddress.parse(address(rng)) for _ in range(rng.choice([1, 1, 1, 2, 3]))
            )
        )
        expected = stdlib_fold("To", [Address(display_name=n, addr_spec=a) for n, a in pairs])
        delegated.clear()
        assert mime_fast.fold_addresses("To", pairs) == expected, pairs
        # one mailbox on one line, a name without specials: written without the stdlib
        name = pairs[0][0]
        if len(pairs) == 1 and expected.count("\r\n") == 1 and not is_odd(name):
            simple += mime_fast._SPECIALS.isdisjoint(name)
            assert not delegated or not mime_fast._SPECIALS.isdisjoint(name), pairs
    assert simple > 800


def test_quoted_printable_lines_are_encoded_exactly_as_the_stdlib_does():
    chooser = random.Random(20261203)
    alphabet = "aZ9 =\t.~é\x00\x7f\xff-" + "x" * 20
    for _ in range(5000):
        lines = [
            "".join(chooser.choices(alphabet, k=chooser.randint(0, 200)))
            for _ in range(chooser.randint(1, 6))
        ]
        text = "\n".join(lines)
        expected = quoprimime.body_encode(text + "\n", 78)
        assert "\n".join(mime_fast._quoted_printable_lines(text)) + "\n" == expected, text
