"""A per-process pool of transports, each holding at most one connection, leased one at a time.

A transport object is not safe to share between threads mid-send (an SMTP connection carries
one transaction at a time), so a worker running several threads leases one transport per send
instead of sharing a single one. The pool keeps returned transports for reuse, newest first, so
that under light load one warm connection does the work and the rest age out.

Fork safety: a pool copied into a forked child (Celery's prefork pool forks after the parent
may have built it) must never use the parent's sockets: two processes writing one SMTP
connection interleave their commands, and a ``QUIT`` from the child would end the parent's
session. Every per-process piece of state is rebuilt, empty, the first time a new process
touches it, and what the parent held is forgotten without being closed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from postroom.errors import DeliveryError
from postroom.transports.base import Transport

T = TypeVar("T")

# Guards rebuilding per-process state; replaced in a forked child because another thread of
# the parent may have held it at the moment of the fork, and nothing in the child releases it.
_rebuild_lock = threading.Lock()


def _new_rebuild_lock() -> None:
    global _rebuild_lock
    _rebuild_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_rebuild_lock)


class ProcessLocal(Generic[T]):
    """A value built afresh in each process that reads it, never inherited across a fork."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value = build()
        self._pid = os.getpid()

    def get(self) -> T:
        """This process's value, built on first use after a fork."""
        pid = os.getpid()
        if self._pid != pid:
            with _rebuild_lock:
                # two threads of a new child may race here; only the first builds
                if self._pid != pid:
                    self._value = self._build()
                    self._pid = pid
        return self._value

    def reset(self) -> T:
        """Replace this process's value with a fresh one and return the old one."""
        with _rebuild_lock:
            old, self._value, self._pid = self._value, self._build(), os.getpid()
        return old


@dataclass
class _Idle:
    transport: Transport
    returned_at: float


@dataclass
class _PoolState:
    """What one process's pool holds; replaced wholesale after a fork or by ``close()``."""

    pid: int = field(default_factory=os.getpid)
    ready: threading.Condition = field(default_factory=threading.Condition)
    idle: list[_Idle] = field(default_factory=list)  # most recently returned last
    open: int = 0  # transports built and not yet closed: idle plus leased
    closed: bool = False  # close() ran: leased transports are closed on return


class TransportPool:
    """Up to ``max_size`` transports from ``factory``, each leased to one caller at a time.

    ``lease()`` blocks while ``max_size`` transports are out. Transports idle for longer than
    ``idle_seconds`` (by ``clock``, monotonic seconds) are closed at the next lease. A lease
    ending in an exception other than a ``DeliveryError`` closes its transport instead of
    returning it: the connection may be stuck mid-transaction. Safe across threads and forks.
    """

    def __init__(
        self,
        factory: Callable[[], Transport],
        *,
        max_size: int = 4,
        idle_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be positive, not {idle_seconds}")
        self.factory = factory
        self.max_size = max_size
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._state = ProcessLocal(_PoolState)

    @property
    def open(self) -> int:
        """How many transports this process's pool holds, idle or leased."""
        return self._state.get().open

    @property
    def idle(self) -> int:
        """How many transports wait in this process's pool for a lease."""
        return len(self._state.get().idle)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Transport]:
        """A transport for this caller alone until the ``with`` block ends."""
        state = self._state.get()
        transport = self._acquire(state)
        try:
            yield transport
        except DeliveryError:
            # the transport classified the failure and left its connection usable or closed
            self._release(state, transport)
            raise
        except BaseException:
            self._discard(state, transport)
            raise
        self._release(state, transport)

    def close(self) -> None:
        """Close every idle transport now, and each leased one when its lease ends."""
        state = self._state.reset()
        if state.pid != os.getpid():
            return  # a parent's pool: its sockets are the parent's to close
        with state.ready:
            state.closed = True
            idle, state.idle = state.idle, []
        for entry in idle:
            self._close(state, entry.transport)

    def _acquire(self, state: _PoolState) -> Transport:
        expired = self._take_expired(state)
        for transport in expired:
            self._close(state, transport)
        with state.ready:
            while not state.idle and state.open >= self.max_size:
                state.ready.wait()
            if state.idle:
                return state.idle.pop().transport
            state.open += 1  # the slot is taken before building, outside the lock
        try:
            return self.factory()
        except BaseException:
            with state.ready:
                state.open -= 1
                state.ready.notify()
            raise

    def _take_expired(self, state: _PoolState) -> list[Transport]:
        oldest_kept = self.clock() - self.idle_seconds
        with state.ready:
            expired = [entry.transport for entry in state.idle if entry.returned_at < oldest_kept]
            state.idle = [entry for entry in state.idle if entry.returned_at >= oldest_kept]
        # still counted as open until closed, so no replacement opens before they are gone
        return expired

    def _release(self, state: _PoolState, transport: Transport) -> None:
        if state.pid != os.getpid():
            return  # leased before a fork: the parent's socket, not ours to keep or close
        with state.ready:
            if not state.closed:
                state.idle.append(_Idle(transport, self.clock()))
                state.ready.notify()
                return
        self._close(state, transport)

    def _discard(self, state: _PoolState, transport: Transport) -> None:
        if state.pid != os.getpid():
            return
        self._close(state, transport)

    def _close(self, state: _PoolState, transport: Transport) -> None:
        try:
            # A transport being thrown away may be in any state; its close must not mask
            # the error that led here, nor leave its slot taken.
            with contextlib.suppress(Exception):
                transport.close()
        finally:
            with state.ready:
                state.open -= 1
                state.ready.notify()
