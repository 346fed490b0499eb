"""create_transport(): a URL names the transport; bad URLs fail at start-up, hiding secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.errors import ConfigurationError
from postroom.transports import create_transport
from postroom.transports.console import ConsoleTransport
from postroom.transports.file import FileTransport
from postroom.transports.memory import MemoryTransport
from postroom.transports.smtp import SmtpConfig, SmtpSecurity, SmtpTransport

SECRET = "Sup3r-s3cret"


def smtp_config(url: str) -> SmtpConfig:
    transport = create_transport(url)
    assert isinstance(transport, SmtpTransport)
    return transport.config


# --- smtp:// and smtps:// ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "security", "port"),
    [
        ("smtp://mail.example.test", SmtpSecurity.NONE, 25),
        ("smtp://mail.example.test:2525", SmtpSecurity.NONE, 2525),
        ("smtp://mail.example.test:587", SmtpSecurity.STARTTLS, 587),
        ("smtp://mail.example.test:465", SmtpSecurity.SSL, 465),
        ("smtps://mail.example.test", SmtpSecurity.SSL, 465),
        ("smtps://mail.example.test:2465", SmtpSecurity.SSL, 2465),
        ("smtp://user:pw@mail.example.test", SmtpSecurity.STARTTLS, 587),
        ("smtp://user:pw@mail.example.test:25", SmtpSecurity.STARTTLS, 25),
        ("smtp://user:pw@mail.example.test?security=none", SmtpSecurity.NONE, 25),
        ("smtp://mail.example.test?security=starttls", SmtpSecurity.STARTTLS, 587),
        ("smtp://mail.example.test?security=ssl", SmtpSecurity.SSL, 465),
        ("SMTP://mail.example.test", SmtpSecurity.NONE, 25),
    ],
)
def test_smtp_security_and_port_follow_from_the_url(
    url: str, security: SmtpSecurity, port: int
) -> None:
    config = smtp_config(url)

    assert (config.host, config.security, config.port) == ("mail.example.test", security, port)


def test_credentials_and_options_are_parsed_and_percent_decoded() -> None:
    config = SmtpConfig.from_url(
        "smtp://me%40example.test:p%40ss%2Fw%3Ard@[::1]:2525"
        "?security=starttls&timeout=2.5&local_hostname=worker-1.example.test&ca_file=%2Fetc%2Fca.pem"
    )

    assert config == SmtpConfig(
        host="::1",
        port=2525,
        security=SmtpSecurity.STARTTLS,
        username="me@example.test",
        password="p@ss/w:rd",
        timeout_seconds=2.5,
        local_hostname="worker-1.example.test",
        ca_file="/etc/ca.pem",
    )


def test_the_last_of_a_repeated_option_wins() -> None:
    assert smtp_config("smtp://h?timeout=1&timeout=3").timeout_seconds == 3.0


def test_smtp_defaults() -> None:
    config = smtp_config("smtp://mail.example.test")

    assert (config.username, config.password, config.ca_file) == (None, None, None)
    assert config.timeout_seconds == 10.0
    assert config.local_hostname is None


@pytest.mark.parametrize(
    "url",
    [
        "smtp://",
        "smtp:///no-host",
        "smtp://?security=ssl",
        "smtp://mail.example.test:port",
        "smtp://mail.example.test:99999",
        "smtp://[::1",
        "smtp://mail.example.test?security=tls",
        "smtp://mail.example.test?timeout=soon",
        "smtp://mail.example.test?timeout=0",
        "smtp://mail.example.test?timeout=-1",
        "smtp://mail.example.test?timeout=nan",
        "smtp://mail.example.test?timeout=inf",
        "smtp://mail.example.test?tls=yes",
        "smtp://mail.example.test?security=ssl&ca_file=/nonexistent/ca.pem",
    ],
)
def test_a_malformed_smtp_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        create_transport(url)


@pytest.mark.parametrize(
    "url",
    [
        f"smtp://user:{SECRET}@mail.example.test:2525?timeout=never",
        f"smtp://user:{SECRET}@mail.example.test?security=tls",
        f"smtp://user:{SECRET}@mail.example.test?unknown=1",
        f"smtp://user:{SECRET}@mail.example.test:99999",
        f"smtp://user:{SECRET}/x@mail.example.test",  # an unescaped "/" ends the host part
        f"smtp://user:{SECRET}?x@mail.example.test",
        f"smtp://user:{SECRET}#x@mail.example.test",
        f"smtps://user:{SECRET}@mail.example.test?ca_file=/nonexistent/ca.pem",
        f"smtpx://user:{SECRET}@mail.example.test",
    ],
)
def test_configuration_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_transport(url)

    for text in (str(caught.value), repr(caught.value), *map(str, caught.value.args)):
        assert SECRET not in text
        assert SECRET[:4] not in text


def test_the_smtp_config_never_shows_the_password() -> None:
    transport = create_transport(f"smtp://user:{SECRET}@mail.example.test:2525")
    assert isinstance(transport, SmtpTransport)

    for text in (str(transport.config), repr(transport.config), repr(transport)):
        assert SECRET not in text
    assert transport.config.password == SECRET
    assert "user" in repr(transport.config)


# --- console, file, memory, unknown -----------------------------------------------------------


def test_console_url() -> None:
    assert isinstance(create_transport("console://"), ConsoleTransport)


def test_file_url_names_an_absolute_folder(tmp_path: Path) -> None:
    transport = create_transport(f"file://{tmp_path}/out%20box")

    assert isinstance(transport, FileTransport)
    assert transport.directory == tmp_path / "out box"


def test_file_url_may_name_localhost(tmp_path: Path) -> None:
    transport = create_transport(f"file://localhost{tmp_path}")

    assert isinstance(transport, FileTransport)
    assert transport.directory == tmp_path


@pytest.mark.parametrize("url", ["file://", "file:", "file://outbox", "file://outbox/mail"])
def test_file_url_without_an_absolute_local_path_is_a_configuration_error(url: str) -> None:
    # file://outbox/mail would otherwise write to /mail: the "outbox" is a host name
    with pytest.raises(ConfigurationError):
        create_transport(url)


@pytest.mark.parametrize(
    ("url", "name"), [("memory://", "default"), ("memory://inbox-7", "inbox-7")]
)
def test_memory_url_names_the_mailbox(url: str, name: str) -> None:
    transport = create_transport(url)

    assert isinstance(transport, MemoryTransport)
    assert transport.mailbox_name == name


@pytest.mark.parametrize(
    "url", ["", "mail.example.test", "postmark://key@api", "http://x", "smtp+tls://h"]
)
def test_an_unknown_scheme_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown transport scheme"):
        create_transport(url)


@pytest.mark.parametrize("scheme", ["smtp", "smtps", "console", "file", "memory"])
def test_every_known_scheme_is_named_in_the_unknown_scheme_error(scheme: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_transport("nope://")

    assert scheme in str(caught.value)
