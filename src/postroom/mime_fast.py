"""The bytes of a common message, written directly instead of through ``email.message``.

``EmailMessage`` under the SMTP policy spends most of a message's CPU re-parsing the headers it
was just given and walking the parse trees to fold them. For the shape transactional mail
usually takes (text, HTML or both; no attachments or inline images; no SMTPUTF8) its output is
fully determined, so this module writes the same bytes itself: same header order and folding at
78 columns, same RFC 2047 encoded words, same Content-Transfer-Encoding choice, same boundary.
The one choice postroom makes for both paths is ``body_transfer_encoding``'s.

Whatever is not reproduced exactly is handed back: ``build_bytes`` returns ``None`` and the
caller uses ``EmailMessage``; a single header that is out of reach (several addresses that need
folding, unusual whitespace, an encoded-word lookalike) is folded by the stdlib's own header
object, alone. tests/test_mime_fast.py compares both paths byte for byte over a generated corpus.
Written against CPython 3.11's ``email`` package; ``EXPECTED_PYTHON`` guards against another.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from email.headerregistry import Address, HeaderRegistry
from email.policy import SMTP
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from string import ascii_letters, digits
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postroom.messages import ClaimedMessage, Message

# The folding and encoded-word rules below mirror this version's email package; on any other
# minor version build_bytes declines, so a stdlib change can never alter what is sent.
EXPECTED_PYTHON = (3, 11)

_MAX = 78  # SMTP.max_line_length (typed Optional, hence spelled out)
_NL = "\r\n"
_WSP = " \t"
# "=?utf-8?q?" + "?=": the chrome around the text of an encoded word
_EW_CHROME = 12

# Characters the email package treats specially: a header value or name holding any of them
# (line breaks, which it refuses or splits on; controls; lone surrogates) takes the slow path.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")
# Whitespace other than the space: the header parser folds runs of it (str.lstrip) into one
# token, which the word splitter here does not model, so such a header is folded by the stdlib.
_OTHER_SPACE = re.compile(r"[^\S ]")
_WORDS = re.compile(r"( +)")
# RFC 5322 specials as ``email._header_value_parser.SPECIALS``: a display name holding one is
# quoted by ``Address.__str__``.
_SPECIALS = frozenset('()<>@,:;."[]\\')
# An addr-spec that ``Address`` prints back unchanged (no quoting of the local part).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9-]+"
_SIMPLE_ADDR = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")
_SIMPLE_MSGID = re.compile(
    r"<[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>"
)
# Header names with their own parser class (and perhaps a count limit) in the default registry.
_REGISTERED = frozenset(HeaderRegistry().registry)
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")

# The "Q" encoding of RFC 2047 as the email package writes it: these bytes stay, the space
# becomes "_", every other byte "=XX".
_Q_SAFE = frozenset(b"-!*+/" + (ascii_letters + digits).encode())
_Q_TABLE = {
    byte: chr(byte) if byte in _Q_SAFE else "_" if byte == 0x20 else f"={byte:02X}"
    for byte in range(256)
}
_Q_LEN = [len(_Q_TABLE[byte]) for byte in range(128)]

_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))
_BASE64_LINE = _MAX // 4 * 3  # input bytes per base64 body line


def build_bytes(
    message: Message | ClaimedMessage,
    address_headers: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    *,
    now: datetime,
) -> bytes | None:
    """``build_email(...).as_bytes()`` for a common message, or ``None`` if it is not covered.

    ``address_headers`` are From, To, Cc and Reply-To as ``(display name, addr-spec)`` pairs in
    their wire form; the caller decides SMTPUTF8 and attachments, neither of which is covered.
    """
    if sys.version_info[:2] != EXPECTED_PYTHON:
        return None
    text, html = message.text, message.html
    if text is None and html is None:
        return None  # a message without a body: rare enough to leave to EmailMessage
    head = _headers(message, address_headers, now)
    if head is None:
        return None
    try:
        if html is None:
            assert text is not None
            return _single(head, "plain", text)
        if text is None:
            return _single(head, "html", html)
        return _alternative(head, text, html)
    except UnicodeEncodeError:
        return None  # a lone surrogate in a body: the slow path raises the caller's error


def _headers(
    message: Message | ClaimedMessage,
    address_headers: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    now: datetime,
) -> str | None:
    """The message's own header block, in ``build_email``'s order, or ``None``."""
    folded: list[str] = []
    for name, pairs in address_headers:
        if pairs:
            if any(_UNSAFE.search(n) or _UNSAFE.search(a) for n, a in pairs):
                return None
            folded.append(fold_addresses(name, tuple(pairs)))
    if _UNSAFE.search(message.subject):
        return None
    folded.append(fold_unstructured("Subject", message.subject))
    date = _date(now)
    if date is None:
        return None
    folded.append(f"Date: {date}{_NL}")
    folded.append(_fold_message_id(message.message_id_header))
    for name, value in message.headers.items():
        if not isinstance(value, str) or _UNSAFE.search(value) or not _is_plain_header_name(name):
            return None
        folded.append(fold_unstructured(name, value))
    return "".join(folded)


def _is_plain_header_name(name: str) -> bool:
    """A custom header EmailMessage stores as unstructured text and keeps where it was put.

    Registered names (Subject, To, MIME-Version, …) have their own parsers or a count limit,
    and ``set_content`` drops every ``Content-*`` header set before it.
    """
    lowered = name.lower()
    return (
        _HEADER_NAME.fullmatch(name) is not None
        and len(name) < _MAX // 2
        and lowered not in _REGISTERED
        and not lowered.startswith("content-")
    )


@lru_cache(maxsize=64)
def _stable_date(date: str) -> bool:
    """Whether the Date header, which is parsed and formatted again, prints ``date`` unchanged."""
    return format_datetime(parsedate_to_datetime(date)) == date


def _date(now: datetime) -> str | None:
    # The header shows whole seconds, and a batch's messages are built within a few of them.
    # The offset is part of the key: one instant in two time zones is one key otherwise.
    return _date_of_second(now.replace(microsecond=0), now.utcoffset())


@lru_cache(maxsize=8)
def _date_of_second(second: datetime, _offset: timedelta | None) -> str | None:
    date = format_datetime(second)
    return date if _stable_date(date) else None


def _fold_message_id(value: str) -> str:
    line = f"Message-ID: {value}"
    if len(line) <= _MAX and _SIMPLE_MSGID.fullmatch(value):
        return line + _NL
    return _stdlib_fold("Message-ID", value)


# -- header folding ----------------------------------------------------------------------------


def fold_unstructured(name: str, value: str) -> str:
    """``name: value`` folded as the SMTP policy folds an unstructured header (Subject, X-…)."""
    if not value or "=?" in value or _OTHER_SPACE.search(value) or not value.isprintable():
        # empty: no space after the colon; "=?": the parser decodes encoded-word lookalikes
        return _stdlib_fold(name, value)
    if value.isascii():
        line = f"{name}: {value}"
        if len(line) <= _MAX:
            return line + _NL
        if len(value) + 1 <= _MAX:
            # The value does not fit after the name but does on a line of its own: the folder
            # moves it there whole rather than breaking it between words.
            return f"{name}:{_NL} {value}{_NL}"
    folder = _Folder(f"{name}: ")
    if not folder.add_words(value):
        return _stdlib_fold(name, value)
    return folder.result()


def fold_addresses(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """An address header from ``(display name, addr-spec)`` pairs, folded as the policy does."""
    if all(_SIMPLE_ADDR.fullmatch(addr) for _, addr in pairs) and not any(
        "=?" in display for display, _ in pairs
    ):
        if len(pairs) == 1 and not pairs[0][0].isascii():
            folded = _fold_non_ascii_mailbox(name, *pairs[0])
            if folded is not None:
                return folded
        else:
            line = f"{name}: {', '.join(_mailbox(d, a) for d, a in pairs)}"
            if line.isascii() and len(line) <= _MAX and line.isprintable():
                return line + _NL
    return _stdlib_fold(name, pairs)


def _mailbox(display: str, addr: str) -> str:
    """As ``Address.__str__``: the display name quoted when it holds a special."""
    if not display:
        return addr
    if not _SPECIALS.isdisjoint(display):
        display = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{display} <{addr}>"


def _fold_non_ascii_mailbox(name: str, display: str, addr: str) -> str | None:
    """One mailbox whose display name needs encoded words, when the result fits on one line.

    Unquoted names fold like unstructured text (ASCII words kept, non-ASCII ones encoded and
    merged with the encoded words before them); a name that needs quoting or more than one
    line goes through quoted-string and per-level refolding rules, left to the stdlib.
    """
    if not _SPECIALS.isdisjoint(display) or _OTHER_SPACE.search(display):
        return None
    if not display.isprintable() or display[0] == " " or display[-1] == " ":
        return None
    folder = _Folder(f"{name}: ")
    if not folder.add_words(display) or len(folder.lines) > 1:
        return None
    line = f"{folder.lines[0]} <{addr}>"
    return line + _NL if len(line) <= _MAX else None


@lru_cache(maxsize=1024)
def _stdlib_fold(name: str, value: str | tuple[tuple[str, str], ...]) -> str:
    """One header exactly as ``EmailMessage`` writes it: built and folded by the policy itself.

    Cached because what falls here (a long From or Reply-To, a fixed custom header) tends to
    repeat from one message to the next.
    """
    stored: str | list[Address]
    if isinstance(value, str):
        stored = value
    else:
        stored = [Address(display_name=display, addr_spec=addr) for display, addr in value]
    folded: str = SMTP.header_factory(name, stored).fold(policy=SMTP)
    return folded


class _Folder:
    """Lines of one header being folded word by word, as the policy's refolding does it.

    The email package decides per token: an ASCII word is kept as it is (on the current line if
    it fits, else on a new line that takes over the preceding space); a non-ASCII word becomes an
    RFC 2047 encoded word, merged with the encoded word already on the line and the plain words
    after it into a single encoded run, split over lines where it does not fit. ``run`` is the
    text that the part of the line from ``last_ew`` stands for, which is what gets re-encoded.
    Methods return False where this model stops matching the stdlib's; the caller falls back.
    """

    def __init__(self, start: str) -> None:
        self.lines = [start]
        self.last_ew: int | None = None
        self.stale = False  # last_ew points into an earlier line (the stdlib keeps it anyway)
        self.run = ""

    def result(self) -> str:
        return _NL.join(self.lines) + _NL

    def add_words(self, value: str) -> bool:
        for token in _WORDS.split(value):
            if not token:
                continue
            ok = self._add_plain(token) if token.isascii() else self._add_encoded(token)
            if not ok:
                return False
        return True

    def _add_plain(self, token: str) -> bool:
        lines = self.lines
        if len(token) <= _MAX - len(lines[-1]):
            lines[-1] += token
            self.run += token
            return True
        if len(token) + 1 > _MAX:
            return False  # the stdlib would encode a word too long for any line
        stolen = ""
        if lines[-1] and lines[-1][-1] in _WSP:
            stolen = lines[-1][-1]
            lines[-1] = lines[-1][:-1]
        elif token[0] != " ":
            return False
        lines.append(stolen + token)
        self.last_ew, self.stale, self.run = None, False, ""
        return True

    def _add_encoded(self, token: str) -> bool:
        lines = self.lines
        combine = self.last_ew is not None
        if combine:
            if self.stale:
                return False
            assert self.last_ew is not None
            text = self.run + token
            lines[-1] = lines[-1][: self.last_ew]
        else:
            text = token
        prefix = ""
        if text[0] in _WSP:
            # the leading blank stays outside the encoded word (and, when merging, in the run)
            if len(lines[-1]) == _MAX:
                return False
            lines[-1] += text[0]
            prefix = text[0] if combine else ""
            text = text[1:]
        new_last_ew = self.last_ew if combine else len(lines[-1])
        stale = False
        chunk = ""
        while text:
            remaining = _MAX - len(lines[-1])
            if remaining - _EW_CHROME <= 0:
                lines.append(" ")
                stale = True
                continue
            size = _fitting_prefix(text, remaining)
            chunk, text = text[:size], text[size:]
            lines[-1] += _encoded_word(chunk)
            if text:
                lines.append(" ")
                new_last_ew, stale, prefix = 1, False, ""
        self.last_ew, self.stale, self.run = new_last_ew, stale, prefix + chunk
        return True


def _char_lengths(text: str) -> Iterable[tuple[int, int]]:
    """(UTF-8 length, Q-encoded length) of each character."""
    for char in text:
        code = ord(char)
        if code < 0x80:
            yield 1, _Q_LEN[code]
        else:
            size = 2 if code < 0x800 else 3 if code < 0x10000 else 4
            yield size, 3 * size


def _fitting_prefix(text: str, remaining: int) -> int:
    """How many characters of ``text`` the stdlib puts in the next encoded word.

    It tries the first ``remaining - chrome`` characters and drops one at a time until the
    word fits in ``remaining`` columns; the lengths are computed here rather than encoded.
    """
    limit = min(remaining - _EW_CHROME, len(text))
    utf8 = [0]
    q = [0]
    for size, qsize in _char_lengths(text[:limit]):
        utf8.append(utf8[-1] + size)
        q.append(q[-1] + qsize)
    for count in range(limit, -1, -1):
        qlen = q[count]
        blen = (utf8[count] + 2) // 3 * 4
        if _EW_CHROME + (qlen if qlen - blen < 5 else blen) <= remaining:
            return count
    return 0  # unreachable: the empty word always fits


def _encoded_word(text: str) -> str:
    """RFC 2047 word in UTF-8, Q unless B is at least 5 characters shorter (the stdlib's bias)."""
    data = text.encode("utf-8")
    q = data.decode("latin-1").translate(_Q_TABLE)
    blen = (len(data) + 2) // 3 * 4
    if len(q) - blen < 5:
        return f"=?utf-8?q?{q}?="
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


# -- bodies ------------------------------------------------------------------------------------


# SMTP's limit on a line of message data: 1,000 octets with its CRLF (RFC 5321 4.5.3.1.6).
MAX_LINE_OCTETS = 998


def body_transfer_encoding(text: str) -> str | None:
    """The transfer encoding postroom picks for a body: "7bit" where it can go as it is.

    The stdlib quotes any body with a line over 78 columns, RFC 5322's recommended width,
    although 7bit allows lines up to SMTP's limit, and a paragraph on one line is common (the
    text part derived from HTML writes each paragraph so). An ASCII body without NUL whose
    every line fits that limit goes unencoded, as Django and Ruby's Mail send it, which saves
    the worker quoting it. ``None`` (lines past the limit, NUL, non-ASCII) leaves the choice
    to the stdlib: quoted-printable or base64 (8bit only with SMTPUTF8: see ``mime.SMTP_7BIT``).
    """
    return "7bit" if _goes_as_is(text, text.encode("utf-8").splitlines()) else None


def _goes_as_is(text: str, lines: list[bytes]) -> bool:
    # lines as the stdlib splits them: of the encoded bytes, at CR, LF and CRLF only
    return (
        text.isascii() and "\x00" not in text and max(map(len, lines), default=0) <= MAX_LINE_OCTETS
    )


def _encode_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body bytes) as ``set_content(text, cte=...)`` writes them
    under ``mime.SMTP_7BIT``.

    Lines are normalised to CRLF. ``body_transfer_encoding`` picks 7bit where it can; else, up
    to 78 bytes a line, an ASCII body (one with NUL) goes as it is too; else, quoted-printable
    or base64, whichever the first ten lines show to be shorter, the stdlib's own heuristic.
    """
    lines = text.encode("utf-8").splitlines()
    if _goes_as_is(text, lines) or (text.isascii() and max(map(len, lines), default=0) <= _MAX):
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    # The stdlib compares the first ten lines encoded both ways. Quoted-printable encodes each
    # line on its own, so the first ten are read off the whole body's encoding.
    quoted = _quoted_printable_lines(b"\n".join(lines).decode("latin-1"))
    sniff_bytes = sum(map(len, lines[:10])) + 2 * min(len(lines), 10)
    sniff_quoted = sum(map(len, quoted[:10])) + min(len(lines), 10)  # and an LF each
    if sniff_quoted > (sniff_bytes + 2) // 3 * 4 + 1:  # len(b2a_base64(sniff))
        data = b"\r\n".join(lines) + b"\r\n"
        return "base64", b"".join(
            binascii.b2a_base64(data[i : i + _BASE64_LINE], newline=False) + b"\r\n"
            for i in range(0, len(data), _BASE64_LINE)
        )
    # soft line breaks come back as LF, like hard ones: the generator writes both as CRLF
    joined = "\n".join(quoted).replace("\n", "\r\n") + "\r\n"
    return "quoted-printable", joined.encode("ascii")


# Characters quoted-printable writes as they are: printable ASCII but "=", space and tab (and
# the line feeds between lines, which it keeps). A text of these and "=" (any HTML with an
# attribute has one) only needs its "=" escaped.
_QP_PRINTABLE = re.compile(r"[\t\n -~]*")
_QP_ESCAPED = re.compile(r"[^\t\n -<>-~]")
_QP_ESCAPES = {chr(c): f"={c:02X}" for c in range(256) if _QP_ESCAPED.fullmatch(chr(c))}


def _qp_escape(match: re.Match[str]) -> str:
    return _QP_ESCAPES[match[0]]


def _quoted_printable_lines(text: str) -> list[str]:
    """The lines of ``quoprimime.body_encode(text + "\\n", 78)`` (``text`` is latin-1).

    The stdlib translates every character through a 256-entry table and walks every line in
    Python. Here the whole text is escaped at once (a printable text, the usual case, only
    needs its "=" escaped), and only lines too long or ending in a space or tab are walked.
    """
    if _QP_PRINTABLE.fullmatch(text):
        escaped = text.replace("=", "=3D")
    else:
        escaped = _QP_ESCAPED.sub(_qp_escape, text)
    return [
        line if len(line) <= _MAX and not line.endswith((" ", "\t")) else _soft_breaks(line)
        for line in escaped.split("\n")
    ]


def _soft_breaks(encoded: str) -> str:
    """One escaped line cut as the stdlib cuts it, its pieces joined by soft line breaks.

    Pieces are at most 77 characters and an "=", never splitting an "=XX" escape; a space or
    tab ending the line is encoded (after a soft break when there is no room for it).
    """
    ends_in_blank = encoded.endswith((" ", "\t"))
    pieces = []
    start, last_start = 0, len(encoded) - 1 - _MAX
    while start <= last_start:
        stop = start + _MAX - 1
        if encoded[stop - 2] == "=":  # an escape would be split: its "=" ends this piece
            pieces.append(encoded[start : stop - 1])
            start = stop - 2
        elif encoded[stop - 1] == "=":
            pieces.append(encoded[start:stop])
            start = stop - 1
        else:
            pieces.append(encoded[start:stop] + "=")
            start = stop
    if not ends_in_blank:
        pieces.append(encoded[start:])
        return "\n".join(pieces)
    blank = encoded[-1]
    room = start - last_start
    if room >= 3:
        tail = f"={ord(blank):02X}"
    elif room == 2:
        tail = f"{blank}=\n"
    else:
        tail = f"=\n={ord(blank):02X}"
    pieces.append(encoded[start:-1] + tail)
    return "\n".join(pieces)


def _part(subtype: str, text: str, *, mime_version: bool) -> bytes:
    cte, body = _encode_body(text)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"{_NL}Content-Transfer-Encoding: {cte}{_NL}'
    )
    if mime_version:
        head += f"MIME-Version: 1.0{_NL}"
    return (head + _NL).encode("ascii") + body


def _single(head: str, subtype: str, text: str) -> bytes:
    # set_content writes Content-Type and Content-Transfer-Encoding, then adds MIME-Version
    return head.encode("ascii") + _part(subtype, text, mime_version=True)


def _alternative(head: str, text: str, html: str) -> bytes | None:
    # add_alternative moves the text part's Content-* headers into a first subpart, adds the
    # multipart Content-Type after MIME-Version, and makes the HTML part a whole EmailMessage,
    # which is why that part alone carries its own MIME-Version.
    parts = [_part("plain", text, mime_version=False), _part("html", html, mime_version=True)]
    boundary = _make_boundary(b"\r\n".join(parts))
    if boundary is None:
        return None
    delimiter = f"{_NL}--{boundary}{_NL}".encode("ascii")
    return b"".join(
        (
            head.encode("ascii"),
            f"MIME-Version: 1.0{_NL}Content-Type: multipart/alternative;{_NL}".encode("ascii"),
            f' boundary="{boundary}"{_NL}{_NL}--{boundary}{_NL}'.encode("ascii"),
            delimiter.join(parts),
            f"{_NL}--{boundary}--{_NL}".encode("ascii"),
        )
    )


def _make_boundary(parts_text: bytes) -> str | None:
    """A boundary drawn as ``email.generator`` draws it (same random call, same format).

    The generator then checks that no line of the parts is the boundary delimiter (its regex
    ``^--B(--)?$``, multiline); that is done here with ``find`` rather than compiling a pattern
    per message. On a clash, which CRLF-only parts make practically impossible, the generator
    would append a counter; that case is left to the slow path.
    """
    token = random.randrange(sys.maxsize)
    boundary = f"{'=' * 15}{token:0{_BOUNDARY_DIGITS}d}=="
    return None if _is_delimiter_line(parts_text, b"--" + boundary.encode("ascii")) else boundary


def _is_delimiter_line(text: bytes, needle: bytes) -> bool:
    """Whether ``needle``, alone or followed by ``--``, makes up a whole line of ``text``.

    Lines begin at the start or after LF and end at LF or the end, as ``^`` and ``$`` match
    under ``re.MULTILINE``.
    """
    start = text.find(needle)
    while start != -1:
        if start == 0 or text[start - 1] == 0x0A:
            end = start + len(needle)
            if _ends_line(text, end) or (text.startswith(b"--", end) and _ends_line(text, end + 2)):
                return True
        start = text.find(needle, start + 1)
    return False


def _ends_line(text: bytes, index: int) -> bool:
    return index == len(text) or text[index] == 0x0A
