"""file:///dir against the transport contract, plus what it leaves in the folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postroom.transports import create_transport
from postroom.transports.file import FileTransport
from tests.transports.contract import Delivery, TransportContract, make_envelope


class TestFileTransport(TransportContract):
    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[FileTransport]:
        transport = FileTransport(tmp_path / "outbox")
        yield transport
        transport.close()

    @pytest.fixture
    def delivered(self, tmp_path: Path) -> Callable[[], list[Delivery]]:
        # message ids of the contract's envelopes sort in the order they were made;
        # the file transport keeps no envelope, so Bcc recipients are not recorded
        return lambda: [
            Delivery(path.read_bytes()) for path in sorted((tmp_path / "outbox").glob("*.eml"))
        ]


def test_each_message_is_one_eml_file_named_by_its_id(tmp_path: Path) -> None:
    envelope = make_envelope()

    result = FileTransport(tmp_path).send(envelope)

    assert [p.name for p in tmp_path.iterdir()] == [f"{envelope.message_id}.eml"]
    assert envelope.message_id in result.detail


def test_the_folder_is_created_when_missing(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"

    create_transport(f"file://{folder}").send(make_envelope())

    assert len(list(folder.glob("*.eml"))) == 1


def test_no_partial_files_are_left_behind(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path)

    for _ in range(3):
        transport.send(make_envelope())

    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".eml"] * 3


def test_sending_a_message_again_replaces_its_file(tmp_path: Path) -> None:
    envelope = make_envelope()
    transport = FileTransport(tmp_path)

    transport.send(envelope)
    transport.send(envelope)

    assert [p.read_bytes() for p in tmp_path.iterdir()] == [envelope.data]
