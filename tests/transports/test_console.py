"""console:// against the transport contract, plus what it prints."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from postroom.transports import create_transport
from postroom.transports.console import ConsoleTransport
from tests.transports.contract import BCC, Delivery, TransportContract, make_envelope

SEPARATOR = "-" * 72 + "\n"


def printed(output: str) -> list[Delivery]:
    """The messages in the console transport's output, oldest first."""
    deliveries = []
    for block in output.split(SEPARATOR)[1:]:
        first_line, _, text = block.partition("\n")
        name, _, recipients = first_line.partition(": ")
        assert name == "Envelope-To"
        assert text.endswith("\n")
        deliveries.append(Delivery(text[:-1].encode(), tuple(recipients.split(", "))))
    return deliveries


class TestConsoleTransport(TransportContract):
    linesep = b"\n"  # written for a terminal

    @pytest.fixture
    def stream(self) -> io.StringIO:
        return io.StringIO()

    @pytest.fixture
    def transport(self, stream: io.StringIO) -> ConsoleTransport:
        return ConsoleTransport(stream)

    @pytest.fixture
    def delivered(self, stream: io.StringIO) -> Callable[[], list[Delivery]]:
        return lambda: printed(stream.getvalue())


def test_prints_to_standard_output_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    envelope = make_envelope(bcc=BCC)

    create_transport("console://").send(envelope)

    [delivery] = printed(capsys.readouterr().out)
    assert delivery.recipients == tuple(envelope.recipients)
    assert delivery.data == envelope.data.replace(b"\r\n", b"\n")
