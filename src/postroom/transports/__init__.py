"""Transports, chosen by the scheme of the transport URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from postroom.errors import ConfigurationError
from postroom.transports.base import Envelope, SendResult, Transport
from postroom.transports.console import ConsoleTransport
from postroom.transports.file import FileTransport
from postroom.transports.memory import MemoryTransport
from postroom.transports.pool import TransportPool
from postroom.transports.registry import FailoverRule, RegistryConfig, Route, TransportRegistry
from postroom.transports.smtp import SmtpConfig, SmtpTransport


def create_transport(url: str) -> Transport:
    """The transport a URL names: ``smtp://``, ``smtps://``, ``console://``, ``file:///dir``, ``memory://``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # not the error's own text, which could quote a password
        raise ConfigurationError("the transport URL is malformed") from None
    scheme = parts.scheme
    if scheme in {"smtp", "smtps"}:
        return SmtpTransport(SmtpConfig.from_url(url))
    if scheme == "console":
        return ConsoleTransport()
    if scheme == "file":
        path = unquote(parts.path)
        # in file://outbox/mail, "outbox" is a host name and the folder would be /mail
        if not path or parts.netloc not in {"", "localhost"}:
            raise ConfigurationError("the file transport URL is file:///absolute/path/to/folder")
        return FileTransport(Path(path))
    if scheme == "memory":
        return MemoryTransport(parts.netloc or "default")
    raise ConfigurationError(
        f"unknown transport scheme {scheme!r}: use smtp, smtps, console, file or memory"
    )


__all__ = [
    "Envelope",
    "FailoverRule",
    "RegistryConfig",
    "Route",
    "SendResult",
    "Transport",
    "TransportPool",
    "TransportRegistry",
    "create_transport",
]
