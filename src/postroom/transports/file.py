"""file:///path — write each message as an ``.eml`` file into a folder."""

from __future__ import annotations

import os
from pathlib import Path

from postroom.transports.base import Envelope, SendResult


class FileTransport:
    """One ``<message id>.eml`` file per message, written atomically (temp file, then rename)."""

    name = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, envelope: Envelope) -> SendResult:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{envelope.message_id}.eml"
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(envelope.data)
        # rename is atomic, so a reader never sees half a message
        partial.replace(target)
        return SendResult(detail=f"written to {target.name}")

    def close(self) -> None:
        return None
