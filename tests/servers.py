"""Real servers for tests on free loopback ports: Redis, an SMTP sink, PostgreSQL databases."""

from __future__ import annotations

import asyncio
import email
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.message import Message as ParsedMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

# CI sets this so that a missing server fails the run instead of skipping tests silently.
REQUIRE_SERVICES = os.environ.get("POSTROOM_TEST_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "POSTROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when CI requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (POSTROOM_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A throwaway ``redis-server`` on a free port, optionally with AOF persistence."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is not installed")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert self.binary is not None
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


@dataclass
class ReceivedMessage:
    """One message as the SMTP sink received it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def parsed(self) -> ParsedMessage:
        return email.message_from_bytes(self.data)

    @property
    def message_id(self) -> str:
        return str(self.parsed["Message-ID"])


@dataclass
class _Script:
    stage: str  # "RCPT" or "DATA"
    reply: str
    times: int


@dataclass
class SmtpSink:
    """An aiosmtpd server that records what it receives and can be told to refuse."""

    port: int = field(default_factory=free_port)
    received: list[ReceivedMessage] = field(default_factory=list)
    # Seconds each DATA waits before it is accepted, to keep deliveries in flight; may change
    # while the sink runs.
    delay_seconds: float = 0.0
    # Offer SMTPUTF8, so that mail to or from a non-ASCII local part can be accepted.
    smtputf8: bool = False
    _script: list[_Script] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    def start(self) -> SmtpSink:
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=self.smtputf8
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def refuse(self, reply: str, *, stage: str = "DATA", times: int = 1) -> None:
        """Answer the next ``times`` ``stage`` commands with ``reply`` (``451 4.3.0 busy``)."""
        with self._lock:
            self._script.append(_Script(stage, reply, times))

    def _scripted(self, stage: str) -> str | None:
        with self._lock:
            for entry in self._script:
                if entry.stage == stage and entry.times > 0:
                    entry.times -= 1
                    return entry.reply
        return None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        reply = self._scripted("RCPT")
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self._scripted("DATA")
        if reply is not None:
            return reply
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        with self._lock:
            self.received.append(
                ReceivedMessage(
                    envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)
                )
            )
        return "250 2.0.0 Ok: queued"

    def message_ids(self) -> Counter[str]:
        """How many times each Message-ID header was received."""
        with self._lock:
            return Counter(message.message_id for message in self.received)

    def wait_for(self, count: int, *, timeout: float = 30.0) -> None:
        """Block until at least ``count`` messages have arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return
            time.sleep(0.02)
        raise TimeoutError(f"received {len(self.received)} of {count} messages in {timeout}s")


def postgres_admin() -> Any:
    """An autocommit psycopg connection to the server's maintenance database, or skip."""
    import psycopg

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {error}")


def postgres_url(database: str) -> str:
    """The URL of ``database`` on the test server."""
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
