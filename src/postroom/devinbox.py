"""The dev inbox: a local SMTP server that catches every message into a folder of ``.eml`` files.

The folder is the whole interface: the SMTP server writes it, and the API (``/v1/dev/inbox``)
and ``postroom inbox`` read it, so each can run in its own process.
"""

from __future__ import annotations

import email
import email.policy
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from postroom.db import id_created_at, new_id


@dataclass(frozen=True)
class CaughtMessage:
    """One message the dev inbox caught."""

    id: str
    received_at: datetime
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def parsed(self) -> EmailMessage:
        """The message parsed with the modern email policy (decoded headers)."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)


def store(directory: Path, mail_from: str, rcpt_tos: list[str], data: bytes) -> CaughtMessage:
    """Write a caught message into ``directory``; the envelope goes in added headers."""
    directory.mkdir(parents=True, exist_ok=True)
    caught = CaughtMessage(new_id(), datetime.now(UTC), mail_from, list(rcpt_tos), data)
    envelope = (
        f"X-Postroom-Envelope-From: {mail_from}\r\n"
        f"X-Postroom-Envelope-To: {', '.join(rcpt_tos)}\r\n"
    ).encode()
    _write_atomically(directory / f"{caught.id}.eml", envelope + data)
    return caught


def _load(path: Path) -> CaughtMessage:
    raw = path.read_bytes()
    envelope: dict[str, str] = {}
    for _ in range(2):
        line, _, rest = raw.partition(b"\r\n")
        name, _, value = line.decode().partition(": ")
        envelope[name] = value
        raw = rest
    return CaughtMessage(
        id=path.stem,
        received_at=id_created_at(path.stem),
        mail_from=envelope.get("X-Postroom-Envelope-From", ""),
        rcpt_tos=[a for a in envelope.get("X-Postroom-Envelope-To", "").split(", ") if a],
        raw=raw,
    )


def list_caught(directory: Path, *, limit: int = 100) -> list[CaughtMessage]:
    """The newest ``limit`` caught messages, newest first (ids sort by arrival time)."""
    if not directory.is_dir():
        return []
    paths = sorted(directory.glob("*.eml"), reverse=True)[:limit]
    return [_load(path) for path in paths]


def get_caught(directory: Path, caught_id: str) -> CaughtMessage | None:
    """One caught message by id, or ``None``."""
    if not caught_id.isalnum():
        return None
    path = directory / f"{caught_id}.eml"
    return _load(path) if path.is_file() else None


class _CatchAll:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        store(self.directory, envelope.mail_from, envelope.rcpt_tos, bytes(envelope.content))
        return "250 2.0.0 caught by the postroom dev inbox"


class DevInbox:
    """An SMTP server on ``host:port`` that accepts every message into ``directory``."""

    def __init__(self, directory: Path, *, host: str = "127.0.0.1", port: int = 1025) -> None:
        # Only the server needs aiosmtpd: the readers of the folder (the API, `postroom inbox`)
        # and every process that merely loads the CLI go without it.
        from aiosmtpd.controller import Controller

        self.directory = directory
        self._controller = Controller(_CatchAll(directory), hostname=host, port=port)

    def start(self) -> None:
        """Start serving in a background thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._controller.start()

    def stop(self) -> None:
        """Stop serving."""
        self._controller.stop()
