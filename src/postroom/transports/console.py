"""console:// — print each message to standard output, for development."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from postroom.transports.base import Envelope, SendResult


class ConsoleTransport:
    """Writes every message, headers and body, to a stream (standard output by default)."""

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, envelope: Envelope) -> SendResult:
        stream = self._stream or sys.stdout
        text = envelope.data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        with self._lock:
            stream.write(f"{'-' * 72}\nEnvelope-To: {', '.join(envelope.recipients)}\n{text}\n")
            stream.flush()
        return SendResult(detail="written to console")

    def close(self) -> None:
        return None
