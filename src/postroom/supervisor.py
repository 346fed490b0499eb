"""Run several processes as one: start in order, stop in reverse order, never leave one behind.

Every child starts in a session of its own. The terminal's Ctrl-C then reaches only the
supervisor, which stops the children one by one (the API before the worker, the broker last)
instead of all at once; and each child's whole process group, a Celery worker's pool included,
can be killed even after the child itself has died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, TypeAlias

from postroom.errors import PostroomError

POLL_SECONDS = 0.05
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers


class ChildFailed(PostroomError):
    """A child exited on its own or did not become ready in time."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name} {detail}")
        self.name = name


class Interrupted(PostroomError):
    """A stop signal arrived while children were still starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child: its command, environment, readiness check and stop grace period."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 30.0
    stop_timeout: float = 10.0


@dataclass
class Child:
    """A running child, leader of its own process group."""

    spec: ChildSpec
    process: subprocess.Popen[bytes]
    reaped: bool = field(default=False)

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group id."""
        return self.process.pid

    def has_exited(self) -> bool:
        """Whether the child has exited; it is left unreaped (see ``reap``)."""
        if self.reaped:
            return True
        try:
            # WNOWAIT keeps an exited leader as a zombie, so its pid, the id of its process
            # group, cannot be handed to a new process before the group is cleared.
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child alone (it stops its own children in order)."""
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def reap(self) -> int:
        """Kill whatever is left in the child's group, collect the exited child, return its code."""
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()
            self.reaped = True
        return self.process.returncode

    def describe_exit(self) -> str:
        """How the reaped child ended, e.g. ``was killed by SIGKILL``."""
        code = self.process.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


@dataclass
class _Cleanup:
    name: str
    stop: Callable[[], None]


class Supervisor:
    """Starts children in order, watches them, and stops everything in reverse order on exit.

    Use as a context manager: entering installs handlers for SIGINT, SIGTERM and SIGHUP, and
    leaving (normally, on a signal, or on an error) stops every child and cleanup pushed so far.
    ``report`` receives one-line status updates.
    """

    def __init__(self, *, report: Callable[[str], None] = lambda line: None) -> None:
        self.report = report
        self._stack: list[Child | _Cleanup] = []
        self._signum: int | None = None
        self._stopping = False
        self._hurry = False
        self._previous_handlers: dict[int, _Handler] = {}

    def __enter__(self) -> Supervisor:
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self._on_signal)
            # None: a handler installed outside Python, which cannot be put back; use the default.
            self._previous_handlers[signum] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A second Ctrl-C while stopping skips the remaining grace periods.
        if self._stopping or self._signum is not None:
            self._hurry = True
        self._signum = signum

    @property
    def children(self) -> list[Child]:
        """The children started so far, in start order."""
        return [entry for entry in self._stack if isinstance(entry, Child)]

    def start(self, spec: ChildSpec) -> Child:
        """Start a child and return once its readiness check passes.

        Raises ``ChildFailed`` if it exits or is not ready within ``spec.ready_timeout``, and
        ``Interrupted`` if a stop signal arrives first.
        """
        self._raise_if_signalled()
        self.report(f"starting {spec.name}")
        process = subprocess.Popen(
            list(spec.argv),
            env=dict(spec.env) if spec.env is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child = Child(spec, process)
        self._stack.append(child)
        deadline = time.monotonic() + spec.ready_timeout
        while spec.ready is not None and not spec.ready():
            self._raise_if_signalled()
            if child.has_exited():
                child.reap()
                raise ChildFailed(spec.name, f"(pid {child.pid}) {child.describe_exit()} on start")
            if time.monotonic() > deadline:
                raise ChildFailed(spec.name, f"was not ready after {spec.ready_timeout:g} s")
            time.sleep(POLL_SECONDS)
        self.report(f"{spec.name} is ready (pid {child.pid})")
        return child

    def push_cleanup(self, name: str, stop: Callable[[], None]) -> None:
        """Call ``stop`` on shutdown, in reverse order with the children (in-process servers)."""
        self._stack.append(_Cleanup(name, stop))

    def wait(self) -> int:
        """Block until a stop signal arrives and return its number.

        Raises ``ChildFailed`` as soon as any child exits on its own.
        """
        while self._signum is None:
            for child in self.children:
                if child.has_exited():
                    child.reap()
                    raise ChildFailed(child.spec.name, f"(pid {child.pid}) {child.describe_exit()}")
            time.sleep(POLL_SECONDS)
        return self._signum

    def stop_all(self) -> None:
        """Stop every child and cleanup, newest first; children get SIGTERM, then SIGKILL."""
        self._stopping = True
        while self._stack:
            entry = self._stack.pop()
            if isinstance(entry, Child):
                self._stop_child(entry)
            else:
                self.report(f"stopping {entry.name}")
                entry.stop()

    def _stop_child(self, child: Child) -> None:
        if child.reaped:
            return
        if not child.has_exited():
            self.report(f"stopping {child.spec.name} (pid {child.pid})")
            child.signal(signal.SIGTERM)
            if not self._wait_exit(child, child.spec.stop_timeout):
                grace = child.spec.stop_timeout
                self.report(f"{child.spec.name} did not stop within {grace:g} s; killing it")
        child.reap()

    def _wait_exit(self, child: Child, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not child.has_exited():
            if self._hurry or time.monotonic() > deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def _raise_if_signalled(self) -> None:
        if self._signum is not None:
            raise Interrupted(self._signum)
