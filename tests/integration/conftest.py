"""Integration fixtures: real `postroom worker` subprocesses on a throwaway Redis and SMTP sink.

The test process is the producer: it stores messages and publishes real Celery tasks with a
`Postroom` client built on the same settings the worker reads from its environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from postroom.client import Postroom
from postroom.settings import Settings
from tests.servers import RedisServer, SmtpSink

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

WORKERS = pytest.StashKey[list["WorkerProcess"]]()


def worker_env(settings: Settings) -> dict[str, str]:
    """This environment without any POSTROOM_* variable, plus every field of ``settings``.

    Nested fields use the ``__`` delimiter (``POSTROOM_RETRY__BASE_DELAY_SECONDS``), so the
    worker's ``Settings()`` equals ``settings``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}

    def put(prefix: str, values: dict[str, Any]) -> None:
        for name, value in values.items():
            key = f"{prefix}{name.upper()}"
            if isinstance(value, dict):
                put(f"{key}__", value)
            elif value is not None:
                env[key] = value if isinstance(value, str) else json.dumps(value)

    put("POSTROOM_", settings.model_dump(mode="json"))
    return env


def start_postroom(
    arguments: list[str], settings: Settings, *, cwd: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """``postroom <arguments>`` configured by ``settings`` alone, in its own session.

    ``cwd`` should hold no .env file, so the environment is the only configuration; the
    output goes to ``log_path``.
    """
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "postroom.cli.main", *arguments],
            cwd=cwd,
            env=worker_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class ApiProcess:
    """A running ``postroom api``, leader of its own process group."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.is_running():
                raise RuntimeError(f"postroom api exited:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(
            f"postroom api not ready after {READY_TIMEOUT}s:\n{self.log_path.read_text()}"
        )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)


@dataclass
class WorkerProcess:
    """A running ``postroom worker``: the session leader of its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the worker consumes its queues (Celery logs ``<nodename> ready.``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.read_log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} was not ready after {timeout}s")

    def kill(self) -> None:
        """SIGKILL the whole group (main process, pool children, beat), as a crash would.

        Returns once no process of the group can run any more, so nothing it would have
        written to the database is still on its way.
        """
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._running_members():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: processes survived SIGKILL")
            time.sleep(0.02)

    def _running_members(self) -> list[int]:
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # fields after the parenthesised command: state, ppid, pgrp, ...
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except (OSError, ValueError):
                continue
            if int(fields[2]) == self.process.pid and fields[0] not in {"Z", "X"}:
                members.append(int(entry.name))
        return members

    def stop(self) -> None:
        """Warm shutdown, then SIGKILL whatever is left of the group."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT)
        # Pool children and beat outlive a killed main process; the group still names them.
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


StartWorker = Callable[..., WorkerProcess]
MakeSettings = Callable[..., Settings]
MakeProducer = Callable[[Settings], Postroom]


@pytest.fixture
def worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: start a real ``postroom worker`` (prefork) on ``settings`` and wait until ready.

    Its output goes to a log file that is attached to the report of a failed test. Every
    worker's process group is killed at teardown.
    """
    started: list[WorkerProcess] = []
    request.node.stash[WORKERS] = started

    def start(settings: Settings, *, beat: bool = False, concurrency: int = 2) -> WorkerProcess:
        name = f"worker-{len(started) + 1}"
        log_path = tmp_path / f"{name}.log"
        # INFO: readiness is Celery's "ready." line, whatever the command's default level is
        arguments = ["worker", f"--concurrency={concurrency}", "--loglevel=INFO"]
        if beat:
            arguments.append("--beat")
        process = start_postroom(arguments, settings, cwd=tmp_path, log_path=log_path)
        started.append(WorkerProcess(name, process, log_path))
        started[-1].wait_ready()
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in item.stash.get(WORKERS, []):
            report.sections.append((f"{process.name} log", process.read_log()))
    return report


@pytest.fixture
def make_integration_settings(
    make_settings: Callable[..., Settings], redis_server: RedisServer, smtp_sink: SmtpSink
) -> Callable[..., Settings]:
    """Factory: settings on this test's Redis and SMTP sink, with sweeps that run in seconds."""

    def make(database_url: str, **overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "database_url": database_url,
            "broker_url": redis_server.url,
            "transport_url": smtp_sink.url,
            "lease_seconds": 30.0,
            "dispatch_interval_seconds": 0.5,
            "redispatch_after_seconds": 3.0,
            "recover_interval_seconds": 1.0,
            "retry": {"max_attempts": 3, "base_delay_seconds": 0.2, "max_delay_seconds": 1.0},
            **overrides,
        }
        return make_settings(**fields)

    return make


@pytest.fixture
def make_producer() -> Iterator[Callable[[Settings], Postroom]]:
    """Factory: a client that stores messages and publishes real tasks; closed at teardown."""
    clients: list[Postroom] = []

    def make(settings: Settings) -> Postroom:
        clients.append(Postroom(settings))
        return clients[-1]

    yield make
    for client in clients:
        client.celery.close()
        client.close()
