from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from postroom.errors import PermanentFailure
from postroom.messages import Message
from postroom.mime import build_envelope
from postroom.transports.smtp import SmtpConfig, SmtpTransport
from tests.servers import free_port


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture(params=[True, False], ids=["smtputf8", "ascii-only"])
def server(request) -> Iterator[tuple[Controller, Recorder]]:
    recorder = Recorder()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=request.param
    )
    controller.start()
    yield controller, recorder
    controller.stop()


def envelope_to(address: str):
    message = Message(
        id="01UTF8TEST0000000000000000",
        from_addr="Zoë <zoe@example.com>",
        to=[address],
        cc=[],
        bcc=[],
        reply_to=[],
        subject="Grüße",
        text="Hallo",
        html=None,
        headers={},
        message_id_header="<01UTF8TEST0000000000000000@example.com>",
    )
    return build_envelope(message, now=datetime.now(UTC))


def test_a_non_ascii_mailbox_goes_out_with_smtputf8_or_fails_permanently(server):
    controller, recorder = server
    transport = SmtpTransport(SmtpConfig.from_url(f"smtp://127.0.0.1:{controller.port}"))
    envelope = envelope_to("Jörg <jörg@bücher.example>")
    try:
        if controller.SMTP_kwargs.get("enable_SMTPUTF8"):
            transport.send(envelope)
            ((_sender, recipients, data),) = recorder.received
            assert recipients == ["jörg@bücher.example"]
            assert "To: Jörg <jörg@bücher.example>".encode() in data
        else:
            with pytest.raises(PermanentFailure, match="SMTPUTF8"):
                transport.send(envelope)
            assert recorder.received == []
            # the connection stays usable for ASCII mail
            transport.send(envelope_to("ann@example.com"))
            assert [r for _, r, _ in recorder.received] == [["ann@example.com"]]
    finally:
        transport.close()
