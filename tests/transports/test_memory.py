"""memory:// against the transport contract, plus its named mailboxes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from postroom.transports import create_transport
from postroom.transports.memory import MemoryTransport, mailbox
from tests.transports.contract import Delivery, TransportContract, make_envelope


@pytest.fixture
def mailbox_name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    mailbox(name).clear()


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def transport(self, mailbox_name: str) -> Iterator[MemoryTransport]:
        transport = MemoryTransport(mailbox_name)
        yield transport
        transport.close()

    @pytest.fixture
    def delivered(self, mailbox_name: str) -> Callable[[], list[Delivery]]:
        return lambda: [
            Delivery(envelope.data, tuple(envelope.recipients))
            for envelope in mailbox(mailbox_name)
        ]


def test_the_mailbox_holds_the_envelope_that_was_sent(mailbox_name: str) -> None:
    envelope = make_envelope()

    MemoryTransport(mailbox_name).send(envelope)

    assert mailbox(mailbox_name) == [envelope]
    assert mailbox(mailbox_name)[0] is envelope


def test_mailboxes_with_different_names_are_separate(mailbox_name: str) -> None:
    other = f"{mailbox_name}-other"
    first, second = make_envelope(), make_envelope()

    create_transport(f"memory://{mailbox_name}").send(first)
    create_transport(f"memory://{other}").send(second)

    assert mailbox(mailbox_name) == [first]
    assert mailbox(other) == [second]
    mailbox(other).clear()


def test_two_transports_with_one_name_share_the_mailbox(mailbox_name: str) -> None:
    first, second = make_envelope(), make_envelope()

    MemoryTransport(mailbox_name).send(first)
    create_transport(f"memory://{mailbox_name}").send(second)

    assert mailbox(mailbox_name) == [first, second]
