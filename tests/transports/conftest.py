"""Fixtures shared by the transport tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from postroom.transports import create_transport
from postroom.transports.smtp import SmtpTransport


@pytest.fixture
def make_transport() -> Iterator[Callable[[str], SmtpTransport]]:
    transports: list[SmtpTransport] = []

    def make(url: str) -> SmtpTransport:
        transport = create_transport(url)
        assert isinstance(transport, SmtpTransport)
        transports.append(transport)
        return transport

    yield make
    for transport in transports:
        transport.close()
