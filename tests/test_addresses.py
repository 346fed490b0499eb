from __future__ import annotations

import random
from email.utils import parseaddr

import pytest
from email_validator import EmailNotValidError, validate_email

from postroom.addresses import (
    _plain_ascii_address,
    format_address,
    normalize_address,
    normalize_addresses,
    split_address,
)
from postroom.errors import HeaderInjection, InvalidAddress


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  ann@EXAMPLE.com ", "ann@example.com"),
        ("Ann Smith <ann@example.com>", "Ann Smith <ann@example.com>"),
        ('"Smith, Ann" <ann@example.com>', '"Smith, Ann" <ann@example.com>'),
        ("Zoë Ünïcode <zoe@example.com>", "Zoë Ünïcode <zoe@example.com>"),
        ("bob@bücher.example", "bob@bücher.example"),
    ],
)
def test_valid_addresses_come_out_normalised(given, expected):
    assert normalize_address(given, field="to") == expected


@pytest.mark.parametrize(
    "given",
    [
        "",
        "not-an-address",
        "ann@",
        "@example.com",
        "ann@@example.com",
        "a@b.com, c@d.com",
        "ann@localhost",
    ],
)
def test_invalid_addresses_are_rejected_naming_the_field(given):
    with pytest.raises(InvalidAddress) as raised:
        normalize_address(given, field="to[3]")
    assert raised.value.field == "to[3]"


@pytest.mark.parametrize(
    "given", ["ann@example.com\r\nBcc: x@evil.example", "Ann\n <ann@example.com>"]
)
def test_line_breaks_in_addresses_are_header_injection(given):
    with pytest.raises(HeaderInjection):
        normalize_address(given, field="to[0]")


def test_non_string_address_is_rejected():
    with pytest.raises(InvalidAddress):
        normalize_address(42, field="to[0]")  # type: ignore[arg-type]


def test_a_single_string_and_a_list_both_normalise_with_indexed_fields():
    assert normalize_addresses("a@example.com", field="cc") == ["a@example.com"]
    assert normalize_addresses(None, field="cc") == []
    with pytest.raises(InvalidAddress) as raised:
        normalize_addresses(["a@example.com", "nope"], field="cc")
    assert raised.value.field == "cc[1]"


def test_formatted_addresses_split_back_into_name_and_address():
    formatted = format_address('Ann "The" Smith, Jr.', "ann@example.com")
    assert split_address(formatted) == ('Ann "The" Smith, Jr.', "ann@example.com")
    assert split_address("ann@example.com") == ("", "ann@example.com")


@pytest.mark.parametrize(
    "given",
    [
        "ann@example.com",
        "Ann <ann@example.com>",
        "Ann  Smith <ann@example.com>",
        "Ann Smith <ann@example.com>",
        '"Smith, Ann" <ann@example.com>',
        '"Ann \\"the boss\\" Smith" <ann@example.com>',
        "Dr. Ann <ann@example.com>",
        "ann.o'neil@example.com",
        "Zoë Ünïcode <zoë@bücher.example>",
        '"ann smith"@example.com',
        "Ann (work) <ann@example.com>",
        "ann@[192.0.2.1]",
        "Ann <ann@example.com> ",
        "Ann<ann@example.com>",
        " <ann@example.com>",
        "A <b> <ann@example.com>",
        "Ann\t<ann@example.com>",
        "Group: ann@example.com;",
    ],
)
def test_split_address_agrees_with_the_rfc_5322_parser(given):
    # the hand-split fast path must never differ from parseaddr, whatever it is given
    assert split_address(given) == parseaddr(given)
    if "@" in given and not given.startswith("Group"):
        try:
            normal = normalize_address(given, field="to")
        except InvalidAddress:
            return
        assert split_address(normal) == parseaddr(normal)


def _generated_addresses(count: int) -> list[str]:
    chooser = random.Random(20261203)
    local_parts = [
        "ann",
        "Ann.Lee",
        "a+tag",
        "x_y",
        "a--b",
        "-a",
        "a.",
        ".a",
        "a..b",
        "ünï",
        "a" * 65,
    ]
    labels = [
        "example",
        "EXAMPLE",
        "mail",
        "a-b",
        "-ab",
        "ab-",
        "xn--bcher-kva",
        "x_y",
        "123",
        "l" * 64,
    ]
    tops = ["com", "COM", "io", "test", "local", "localhost", "arpa", "c0m", "x", "123", "onion"]
    return [
        chooser.choice(local_parts)
        + "@"
        + ".".join([*chooser.choices(labels, k=chooser.randint(0, 3)), chooser.choice(tops)])
        for _ in range(count)
    ]


def test_the_plain_ascii_shortcut_agrees_with_email_validator():
    taken = 0
    for address in _generated_addresses(3000):
        shortcut = _plain_ascii_address(address)
        try:
            expected: str | None = validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError:
            expected = None
        if shortcut is not None:
            taken += 1
            assert shortcut == expected, address
    assert taken > 50  # the shortcut is actually exercised
