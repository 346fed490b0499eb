"""TransportPool: reuse, size limit under threads, idle close, dropped connections, forks."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from postroom.errors import ConfigurationError, TemporaryFailure
from postroom.transports import create_transport
from postroom.transports.base import Envelope, SendResult
from postroom.transports.pool import TransportPool
from tests.servers import SmtpSink
from tests.transports.contract import make_envelope


@dataclass
class CountingSink(SmtpSink):
    """An SMTP sink that counts sessions and QUITs, and can drop every open connection."""

    sessions: int = 0
    quits: int = 0
    _servers: list[Any] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self._lock:
            self.sessions += 1
            self._servers.append(server)
        return responses

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.quits += 1
        return "221 Bye"

    def drop_connections(self) -> None:
        """Close every client connection from the server side, as an idle timeout would."""
        assert self._controller is not None

        async def drop() -> None:
            for server in self._servers:
                if server.transport is not None:
                    server.transport.close()
            # the sockets close on the loop's next turns
            for _ in range(3):
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(drop(), self._controller.loop).result(timeout=5)


@pytest.fixture
def sink() -> Iterator[CountingSink]:
    server = CountingSink().start()
    yield server
    server.stop()


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A transport that records sends and closes, to see which object a lease handed out."""

    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[Envelope] = []
        self.closes = 0

    def send(self, envelope: Envelope) -> SendResult:
        self.sent.append(envelope)
        return SendResult(detail="recorded")

    def close(self) -> None:
        self.closes += 1


class Factory:
    """Builds ``Recorder`` transports and keeps every one it built."""

    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def __call__(self) -> Recorder:
        transport = Recorder()
        self.built.append(transport)
        return transport


@pytest.fixture
def smtp_pool(sink: CountingSink) -> Iterator[Callable[..., TransportPool]]:
    """Factory: pools of SMTP transports to ``sink``, closed after the test."""
    pools: list[TransportPool] = []

    def make(**options: Any) -> TransportPool:
        pool = TransportPool(lambda: create_transport(sink.url), **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def test_many_sends_share_one_connection(sink: CountingSink, smtp_pool):
    pool = smtp_pool()
    envelopes = [make_envelope() for _ in range(20)]

    for envelope in envelopes:
        with pool.lease() as transport:
            transport.send(envelope)
    pool.close()

    assert sink.sessions == 1
    assert sorted(sink.message_ids().values()) == [1] * 20
    assert sink.quits == 1


def test_threads_never_hold_more_than_max_size_connections(sink: CountingSink, smtp_pool):
    sink.delay_seconds = 0.1  # keeps every lease busy long enough for the others to queue
    pool = smtp_pool(max_size=3)
    start = threading.Barrier(12)
    lock = threading.Lock()
    leased = peak = 0
    errors: list[BaseException] = []

    def send_one() -> None:
        nonlocal leased, peak
        start.wait()
        try:
            with pool.lease() as transport:
                with lock:
                    leased += 1
                    peak = max(peak, leased)
                transport.send(make_envelope())
                with lock:
                    leased -= 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=send_one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert peak == 3
    assert sink.sessions == 3
    assert pool.open == 3
    assert sorted(sink.message_ids().values()) == [1] * 12
    pool.close()
    assert pool.open == 0


def test_a_transport_idle_too_long_is_closed_at_the_next_lease(sink: CountingSink, smtp_pool):
    clock = Clock()
    pool = smtp_pool(idle_seconds=30, clock=clock)
    with pool.lease() as transport:
        transport.send(make_envelope())

    clock.now += 30  # exactly the limit: still kept
    with pool.lease() as transport:
        transport.send(make_envelope())
    assert (sink.sessions, sink.quits) == (1, 0)

    clock.now += 30.5
    with pool.lease() as transport:
        assert sink.quits == 1  # the stale connection said goodbye before a new one opened
        transport.send(make_envelope())

    assert sink.sessions == 2
    assert pool.open == 1
    assert len(sink.received) == 3


def test_a_connection_dropped_between_leases_still_delivers_exactly_once(
    sink: CountingSink, smtp_pool
):
    pool = smtp_pool()
    first, second = make_envelope(), make_envelope()
    with pool.lease() as transport:
        transport.send(first)

    sink.drop_connections()
    with pool.lease() as transport:
        result = transport.send(second)

    assert result.code == 250
    assert sink.sessions == 2
    assert len(sink.received) == 2
    assert sink.message_ids() == {
        f"<{first.message_id}@postroom.test>": 1,
        f"<{second.message_id}@postroom.test>": 1,
    }
    assert pool.open == 1


def test_a_restarted_server_is_reconnected_to_without_losing_or_doubling(
    sink: CountingSink, smtp_pool
):
    pool = smtp_pool()
    with pool.lease() as transport:
        transport.send(make_envelope())
    sink.stop()
    sink.start()  # same port, every old session gone

    with pool.lease() as transport:
        transport.send(make_envelope())

    assert len(sink.received) == 2
    assert sorted(sink.message_ids().values()) == [1, 1]


def test_the_most_recently_returned_transport_is_leased_first():
    factory = Factory()
    pool = TransportPool(factory, max_size=2)
    with pool.lease() as first, pool.lease() as second:
        pass
    assert factory.built == [first, second]

    with pool.lease() as again:
        assert again is first  # returned last, so warmest


def test_an_unexpected_exception_discards_the_transport():
    factory = Factory()
    pool = TransportPool(factory)

    with pytest.raises(RuntimeError, match="bug"), pool.lease() as broken:
        raise RuntimeError("bug")

    assert broken.closes == 1
    assert pool.open == 0
    with pool.lease() as transport:
        assert transport is not broken


def test_a_delivery_failure_returns_the_transport_for_reuse():
    factory = Factory()
    pool = TransportPool(factory)

    with pytest.raises(TemporaryFailure), pool.lease() as transport:
        raise TemporaryFailure("451 busy", transport="recorder", code=451)

    assert transport.closes == 0
    with pool.lease() as again:
        assert again is transport
    assert len(factory.built) == 1


def test_a_factory_that_fails_frees_its_slot():
    attempts = 0

    def factory() -> Recorder:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConfigurationError("cannot build")
        return Recorder()

    pool = TransportPool(factory, max_size=1)
    with pytest.raises(ConfigurationError), pool.lease():
        pass

    assert pool.open == 0
    with pool.lease() as transport:  # would block forever if the slot had leaked
        assert isinstance(transport, Recorder)


def test_close_closes_idle_transports_now_and_leased_ones_on_return():
    factory = Factory()
    pool = TransportPool(factory, max_size=2)
    held = pool.lease()
    leased = held.__enter__()
    with pool.lease() as idle:
        pass

    pool.close()
    assert (idle.closes, leased.closes) == (1, 0)
    held.__exit__(None, None, None)

    assert leased.closes == 1
    assert pool.open == 0
    with pool.lease() as fresh:  # still usable, like a closed transport
        assert fresh not in (idle, leased)


def test_pool_arguments_are_checked():
    with pytest.raises(ValueError, match="max_size"):
        TransportPool(Recorder, max_size=0)
    with pytest.raises(ValueError, match="idle_seconds"):
        TransportPool(Recorder, idle_seconds=0)


def run_in_child(work: Any) -> dict[str, Any]:
    """Run ``work()`` in a forked child and return the JSON dict it produced."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.close(read_end)
            report = work()
        except BaseException as error:
            report, code = {"error": repr(error)}, 1
        with os.fdopen(write_end, "w") as out:
            json.dump(report, out)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as report_in:
        report = json.load(report_in)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return dict(report)


# Python 3.12+ warns about fork() with threads running; the SMTP sink's thread is one, and it
# stays behind in the parent, which is the point of the test.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_an_empty_pool_and_leaves_the_parents_connection_alone(
    sink: CountingSink, smtp_pool
):
    pool = smtp_pool()
    with pool.lease() as parent_transport:
        parent_transport.send(make_envelope())

    def child() -> dict[str, Any]:
        report: dict[str, Any] = {"open": pool.open, "idle": pool.idle}
        with pool.lease() as transport:
            report["same_transport"] = transport is parent_transport
            transport.send(make_envelope())
        pool.close()  # must not QUIT the parent's session
        return report

    report = run_in_child(child)

    assert report == {"open": 0, "idle": 0, "same_transport": False}
    assert sink.sessions == 2
    assert sink.quits == 1  # the child's own connection only
    with pool.lease() as transport:
        assert transport is parent_transport
        transport.send(make_envelope())  # the parent's connection survived the child
    assert sink.sessions == 2
    assert len(sink.received) == 3


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("failure", [None, RuntimeError("bug")])
def test_a_lease_held_across_a_fork_is_forgotten_when_it_ends_in_the_child(
    failure: BaseException | None,
):
    factory = Factory()
    pool = TransportPool(factory, max_size=1)
    lease = pool.lease()
    held = lease.__enter__()

    def child() -> dict[str, Any]:
        # the lease ends in the child: neither kept (the parent's socket) nor closed (a QUIT
        # would end the parent's session)
        if failure is None:
            lease.__exit__(None, None, None)
        else:
            assert lease.__exit__(type(failure), failure, None) is False  # re-raised
        with pool.lease() as fresh:
            report = {"closes": held.closes, "fresh": fresh is not held}
        return {**report, "open": pool.open, "idle": pool.idle}

    report = run_in_child(child)
    lease.__exit__(None, None, None)

    assert report == {"closes": 0, "fresh": True, "open": 1, "idle": 1}
    assert held.closes == 0
    with pool.lease() as again:
        assert again is held
