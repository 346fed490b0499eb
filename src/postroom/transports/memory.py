"""memory:// — keep messages in a list in this process; the seam for tests."""

from __future__ import annotations

import threading

from postroom.transports.base import Envelope, SendResult

_mailboxes: dict[str, list[Envelope]] = {}
_lock = threading.Lock()


def mailbox(name: str = "default") -> list[Envelope]:
    """The envelopes sent through ``memory://<name>`` in this process, oldest first."""
    with _lock:
        return _mailboxes.setdefault(name, [])


class MemoryTransport:
    """Appends each envelope to a named in-process mailbox (``memory://`` is ``default``)."""

    name = "memory"

    def __init__(self, mailbox_name: str = "default") -> None:
        self.mailbox_name = mailbox_name

    def send(self, envelope: Envelope) -> SendResult:
        mailbox(self.mailbox_name).append(envelope)
        return SendResult(detail=f"stored in memory mailbox {self.mailbox_name!r}")

    def close(self) -> None:
        return None
