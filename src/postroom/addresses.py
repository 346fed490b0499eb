"""Parse and normalise email addresses; refuse header values that could inject headers."""

from __future__ import annotations

import functools
import re
from email.utils import getaddresses, parseaddr

import email_validator
import idna
from email_validator import EmailNotValidError, validate_email

from postroom.errors import HeaderInjection, InvalidAddress, MessageRejected

_LINE_BREAKS = ("\r", "\n", "\x00")
_NEEDS_QUOTES = set('()<>[]:;@\\,."')


def reject_line_breaks(value: str, *, field: str | None) -> str:
    """Return ``value`` unchanged, or raise ``HeaderInjection`` if it holds CR, LF or NUL."""
    if any(char in value for char in _LINE_BREAKS):
        raise HeaderInjection("line breaks are not allowed in header values", field=field)
    return value


def format_address(name: str, addr: str) -> str:
    """``Name <addr>`` with the name quoted when RFC 5322 requires it; bare ``addr`` if no name."""
    if not name:
        return addr
    if any(char in _NEEDS_QUOTES for char in name):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        name = f'"{escaped}"'
    return f"{name} <{addr}>"


def normalize_address(value: str, *, field: str) -> str:
    """Validate one address (``a@b.example`` or ``Name <a@b.example>``) and return its normal form.

    The domain is lower-cased and IDNA-normalised by email-validator; deliverability (DNS) is
    not checked here because that would put a network round trip inside ``send()``.
    """
    if not isinstance(value, str):
        raise InvalidAddress("an address must be a string", field=field)
    try:
        return _normalize(value)
    except MessageRejected as error:  # InvalidAddress or HeaderInjection, now naming the field
        raise type(error)(error.detail, field=field) from None


# The same senders and many of the same recipients recur: parsing and validating an address
# costs more than the rest of send()'s Python work, so valid results are remembered.
@functools.lru_cache(maxsize=4096)
def _normalize(value: str) -> str:
    reject_line_breaks(value, field=None)
    value = value.strip()
    simple = _plain_ascii_address(value)
    if simple is not None:
        return simple
    if value.count("<") > 1 or len(getaddresses([value])) != 1:
        raise InvalidAddress("give exactly one address per entry")
    name, addr = parseaddr(value)
    if not addr:
        raise InvalidAddress(f"{value!r} is not an email address")
    try:
        checked = validate_email(addr, check_deliverability=False)
    except EmailNotValidError as error:
        raise InvalidAddress(str(error)) from None
    return format_address(name.strip(), checked.normalized)


# A bare address of the plainest kind: ASCII letters, digits and "_+-" in dot-separated local
# words, and a host name under a letters-only top-level domain. email-validator accepts every
# such address, and its normal form is the address with the domain lower-cased. Punycode
# labels ("xn--") are left to email-validator, which turns them into Unicode.
_PLAIN_ASCII = re.compile(
    r"[A-Za-z0-9_+-]{1,64}(?:\.[A-Za-z0-9_+-]{1,64})*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


def _plain_ascii_address(value: str) -> str | None:
    """The normal form of ``value`` if it is a plain ASCII address, else None.

    Unique recipients (bulk sends) miss the cache, and email-validator costs more than the
    rest of ``send()``: the plainest (and by far the commonest) addresses skip it.
    """
    if len(value) > 254 or not _PLAIN_ASCII.fullmatch(value) or "--" in value:
        return None
    local, _, domain = value.rpartition("@")
    domain = domain.lower()
    if len(local) > 64 or any(
        domain == name or domain.endswith(f".{name}")
        for name in email_validator.SPECIAL_USE_DOMAIN_NAMES
    ):
        return None
    return f"{local}@{domain}"


def normalize_addresses(
    values: str | list[str] | tuple[str, ...] | None, *, field: str
) -> list[str]:
    """Validate a single address or a list of them; ``None`` gives an empty list."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [normalize_address(value, field=f"{field}[{i}]") for i, value in enumerate(values)]


# Characters after which only the full RFC 5322 parser gives the right answer: quoting,
# comments, groups, and whitespace outside the angle brackets.
_NEEDS_PARSER = frozenset('"()\\,;: \t')


def split_address(formatted: str) -> tuple[str, str]:
    """``(display name, addr-spec)`` of an address produced by ``normalize_address``.

    The normal forms ``a@b.example`` and ``Name <a@b.example>`` with an unquoted name are
    split by hand, to the same result as ``parseaddr``, which is pure Python and dominated the
    worker's per-message cost; anything else goes through ``parseaddr``.
    """
    if formatted.endswith(">"):
        name, bracket, addr = formatted[:-1].rpartition("<")
        if (
            bracket
            and name.endswith(" ")
            and "<" not in name
            and not _NEEDS_PARSER.intersection(addr)
            and not _NEEDS_PARSER.intersection(name.replace(" ", ""))
            and "  " not in name
            and not name.startswith(" ")
        ):
            return name[:-1], addr
    elif "<" not in formatted and not _NEEDS_PARSER.intersection(formatted):
        return "", formatted
    return parseaddr(formatted)


def ascii_domain(domain: str) -> str:
    """The domain in its ASCII form (IDNA 2008 with UTS 46 mapping, as email-validator checks)."""
    return domain if domain.isascii() else idna.encode(domain, uts46=True).decode()
