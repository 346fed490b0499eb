"""Named transports: which one a message takes (routing), when to fail over, and their pools.

Settings name transports by URL (``transport_url`` is the one named ``default``, always
present); ``routes`` send a stream or a sender domain elsewhere, first match wins; ``failover``
names, per primary, a transport to use for ``cool_down_seconds`` once the primary has failed
temporarily ``after`` times in a row. A caller sends like this and reports every outcome::

    name = registry.active(registry.route(explicit=None, stream="bulk", sender_domain="a.test"))
    with registry.lease(name) as transport:
        try:
            result = transport.send(envelope)
        except TemporaryFailure:
            registry.record(name, temporary_failure=True)
            raise
    registry.record(name, temporary_failure=False)

Failover state lives in each worker process, not in Redis. That costs little: each process
trips on its own after ``after`` failures, so a dead primary defers at most ``after`` messages
per process (deferred, not lost: they are retried with backoff), and keeping it local avoids a
Redis round trip on every send and a shared state that could itself fail or go stale.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postroom.dkim import ascii_domain
from postroom.errors import ConfigurationError, UnknownTransport
from postroom.transports.base import Transport
from postroom.transports.pool import ProcessLocal, TransportPool

if TYPE_CHECKING:
    from postroom.settings import Settings

DEFAULT = "default"
# Names appear in events, metrics and Redis keys: keep them to a short, unambiguous alphabet.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_transport_name(name: str) -> str:
    """``name`` if it can name a transport (letters, digits, ``_.-``); ``ValueError`` if not."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} cannot name a transport: use up to 64 letters, digits, '_', '.' or '-'"
        )
    return name


class Route(BaseModel):
    """Mail matching every given condition goes to ``transport``; a route without any matches all.

    ``sender_domain`` is compared exactly (no subdomains), lower-cased and in ASCII (punycode).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    stream: str | None = None
    sender_domain: str | None = None
    transport: str

    @field_validator("sender_domain")
    @classmethod
    def _normalise_domain(cls, value: str | None) -> str | None:
        return None if value is None else ascii_domain(value)

    @field_validator("transport")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_transport_name(value)

    def matches(self, *, stream: str, sender_domain: str) -> bool:
        """Whether a message of ``stream`` from ``sender_domain`` (normalised) takes this route."""
        return (self.stream is None or self.stream == stream) and (
            self.sender_domain is None or self.sender_domain == sender_domain
        )


class FailoverRule(BaseModel):
    """Use ``to`` for ``cool_down_seconds`` after ``after`` temporary failures in a row."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    to: str
    after: int = Field(default=5, ge=1)
    cool_down_seconds: float = Field(default=60.0, gt=0)

    @field_validator("to")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_transport_name(value)


@dataclass(frozen=True)
class RegistryConfig:
    """Transport URLs by name, routes and failover rules, checked against each other.

    ``ConfigurationError`` names any route or rule naming an unknown transport, and any
    failover cycle; it never quotes a URL, which may carry a password.
    """

    urls: Mapping[str, str]
    routes: tuple[Route, ...] = ()
    failover: Mapping[str, FailoverRule] = field(default_factory=dict)
    pool_max_size: int = 4
    pool_idle_seconds: float = 30.0

    def __post_init__(self) -> None:
        if DEFAULT not in self.urls:
            raise ConfigurationError(f"no transport is named {DEFAULT!r}")
        for index, route in enumerate(self.routes):
            if route.transport not in self.urls:
                raise ConfigurationError(
                    f"routes[{index}] names transport {route.transport!r}, which is not configured"
                )
        for primary, rule in self.failover.items():
            if primary not in self.urls:
                raise ConfigurationError(
                    f"failover is configured for transport {primary!r}, which is not configured"
                )
            if rule.to not in self.urls:
                raise ConfigurationError(
                    f"failover[{primary!r}] names transport {rule.to!r}, which is not configured"
                )
        self._refuse_cycles()

    def _refuse_cycles(self) -> None:
        for start in self.failover:
            chain = [start]
            while (rule := self.failover.get(chain[-1])) is not None:
                if rule.to in chain:
                    loop = " → ".join([*chain[chain.index(rule.to) :], rule.to])
                    raise ConfigurationError(f"failover goes round in a circle: {loop}")
                chain.append(rule.to)

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryConfig:
        """The configuration ``settings`` describe, checked."""
        return cls(
            urls=settings.transport_urls,
            routes=tuple(settings.routes),
            failover=dict(settings.failover),
            pool_max_size=settings.pool_max_size,
            pool_idle_seconds=settings.pool_idle_seconds,
        )


@dataclass
class _Health:
    """One transport's recent outcomes in this process."""

    failures: int = 0  # temporary failures in a row
    tripped_until: float | None = None  # while in the future, its failover target is used


@dataclass
class _Breakers:
    lock: threading.Lock = field(default_factory=threading.Lock)
    health: dict[str, _Health] = field(default_factory=dict)


class TransportRegistry:
    """The configured transports by name: routing, failover and one pool each in this process.

    ``clock`` gives monotonic seconds (idle times and cool-downs); ``create`` builds a transport
    from a URL (``create_transport`` by default). Every URL is parsed once here, so a malformed
    one fails at startup rather than at the first message.
    """

    def __init__(
        self,
        config: RegistryConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        create: Callable[[str], Transport] | None = None,
    ) -> None:
        if create is None:
            from postroom.transports import create_transport  # the package imports this module

            create = create_transport
        self.config = config
        self.clock = clock
        self._create = create
        for name, url in config.urls.items():
            try:
                create(url).close()  # builds without connecting: only the URL is checked
            except ConfigurationError as error:
                raise ConfigurationError(f"transport {name!r}: {error}") from None
        self._pools: dict[str, TransportPool] = {}
        # per process: a lock held by another thread at a fork would stay held in the child
        self._pools_lock = ProcessLocal(threading.Lock)
        self._breakers = ProcessLocal(_Breakers)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> TransportRegistry:
        """A registry of the transports ``settings`` configure; ``ConfigurationError`` if wrong."""
        return cls(RegistryConfig.from_settings(settings), clock=clock)

    @property
    def names(self) -> frozenset[str]:
        """Every configured transport name, ``default`` included."""
        return frozenset(self.config.urls)

    def check(self, name: str) -> str:
        """``name`` if a transport has it; ``UnknownTransport`` (a ``MessageRejected``) if not."""
        if name not in self.config.urls:
            raise UnknownTransport(name)
        return name

    def route(self, *, explicit: str | None, stream: str, sender_domain: str) -> str:
        """The transport a message takes: ``explicit`` if given, else the first matching route."""
        if explicit is not None:
            return self.check(explicit)
        domain = _normalise_domain(sender_domain)
        for route in self.config.routes:
            if route.matches(stream=stream, sender_domain=domain):
                return route.transport
        return DEFAULT

    def active(self, name: str) -> str:
        """The transport to use for ``name`` now: its failover target while it is tripped."""
        now = self.clock()
        breakers = self._breakers.get()
        with breakers.lock:
            # cycles were refused, so the chain ends; only a transport with a rule can trip
            while (rule := self.config.failover.get(name)) is not None:
                health = breakers.health.get(name)
                if health is None or health.tripped_until is None or health.tripped_until <= now:
                    break
                name = rule.to
        return name

    def record(self, name: str, *, temporary_failure: bool) -> None:
        """Count an outcome of ``name``: enough temporary failures in a row trip it.

        Any other outcome, a permanent failure included, shows the transport answering and
        resets the count. After the cool-down one message probes the primary: a temporary
        failure then trips it again at once, a success closes the breaker.
        """
        rule = self.config.failover.get(name)
        if rule is None:
            return
        now = self.clock()
        breakers = self._breakers.get()
        with breakers.lock:
            health = breakers.health.setdefault(name, _Health())
            if not temporary_failure:
                health.failures, health.tripped_until = 0, None
                return
            if health.tripped_until is not None and health.tripped_until > now:
                return  # a send begun before the trip; the cool-down already runs
            probing = health.tripped_until is not None
            health.failures += 1
            if probing or health.failures >= rule.after:
                health.failures, health.tripped_until = 0, now + rule.cool_down_seconds

    def lease(self, name: str) -> AbstractContextManager[Transport]:
        """A transport of ``name`` from this process's pool, for one caller at a time."""
        return self._pool(name).lease()

    def close(self) -> None:
        """Close every pooled connection; the registry stays usable and reconnects on demand."""
        with self._pools_lock.get():
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()

    def _pool(self, name: str) -> TransportPool:
        url = self.config.urls.get(name)
        if url is None:
            raise UnknownTransport(name)
        with self._pools_lock.get():
            pool = self._pools.get(name)
            if pool is None:
                pool = self._pools[name] = TransportPool(
                    lambda: self._create(url),
                    max_size=self.config.pool_max_size,
                    idle_seconds=self.config.pool_idle_seconds,
                    clock=self.clock,
                )
        return pool

    def pools(self) -> dict[str, TransportPool]:
        """The pools built so far, by transport name (for metrics and tests)."""
        with self._pools_lock.get():
            return dict(self._pools)


def _normalise_domain(domain: str) -> str:
    try:
        return ascii_domain(domain)
    except (ValueError, UnicodeError):
        # no route can name an invalid domain, so any unmatchable form will do
        return domain.lower()
