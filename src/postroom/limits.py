"""Global limits per transport: a token bucket (msgs/s), a daily quota and a connection cap.

Delivery asks a ``Limiter`` once per batch, before claiming, and claims at most ``granted``
messages; whatever it was refused it defers to ``Allowance.retry_at`` (a limit reached is
control flow, never a failure). ``RedisLimiter`` (in ``limits_redis``) makes the limits global
across every worker process and host; ``LocalLimiter`` is its in-process twin.

Every operation takes the caller's ``now`` instead of reading a clock: tests drive a
controllable clock through it, and the Redis scripts use it rather than Redis ``TIME`` so that
the quota's calendar day, the bucket and the leases are all judged on one time line. Times
are whole microseconds since the epoch, exact in Python ints and in Lua's doubles alike, so
both limiters compute the same tokens and a token due at ``retry_at`` is there. Workers
therefore need synchronised clocks (NTP); a worker whose clock lags never refills the bucket
backwards, because the bucket's last refill time only moves forward.

The bucket holds ``burst`` tokens and refills at ``rate_per_second``, so any 1-second window
sees at most ``rate + burst`` messages. The default burst is a tenth of a second's worth
(at least 1): 10/s gives at most 11 in any second, and a high rate still grants whole batches.
Tokens that arrive while the bucket is full are lost, so a small burst only reaches the rate
when asks keep pace with tokens: deferring refused message i to ``retry_at + i * spacing``
does that.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from postroom.settings import Settings

logger = logging.getLogger(__name__)

_KEY_PREFIX = "postroom"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_MAX_REASON_CHARS = 200
# Retry-After beyond a day is more likely a provider bug than a plan; a day keeps mail moving.
_MAX_PUSHBACK = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PER_SECOND = 1_000_000


def rate_key(transport: str) -> str:
    """The Redis hash holding a transport's token bucket (``tokens``, ``at``)."""
    return f"{_KEY_PREFIX}:rate:{transport}"


def quota_key(transport: str, day: str) -> str:
    """The Redis counter of messages a transport sent on ``day`` (YYYY-MM-DD, local)."""
    return f"{_KEY_PREFIX}:quota:{transport}:{day}"


def pause_key(transport: str) -> str:
    """The Redis hash holding a provider pause (``until``, ``reason``)."""
    return f"{_KEY_PREFIX}:pause:{transport}"


def connections_key(transport: str) -> str:
    """The Redis sorted set of connection slots, scored by when each lease expires."""
    return f"{_KEY_PREFIX}:conn:{transport}"


class TransportLimits(BaseModel):
    """The limits of one transport; every limit is off (``None``) unless configured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    daily_quota: int | None = Field(default=None, ge=0)
    timezone: str = "UTC"
    max_connections: int | None = Field(default=None, ge=1)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> TransportLimits:
        if self.burst is not None and self.rate_per_second is None:
            raise ValueError("burst needs rate_per_second")
        return self

    @property
    def capacity(self) -> int | None:
        """The bucket's size in messages, or ``None`` without a rate limit."""
        if self.rate_per_second is None:
            return None
        return self.burst or max(1, math.ceil(self.rate_per_second / 10))

    @property
    def zone(self) -> ZoneInfo:
        """The time zone whose calendar days the quota counts."""
        return ZoneInfo(self.timezone)


NO_LIMITS = TransportLimits()


@dataclass(frozen=True)
class Allowance:
    """How many messages may be sent now, and when the refused ones may be tried again."""

    granted: int
    retry_at: datetime | None
    spacing: timedelta
    reason: str | None

    def retry_at_of(self, index: int) -> datetime | None:
        """When the refused message ``index`` (0-based) may be tried: spread by ``spacing``."""
        if self.retry_at is None:
            return None
        return self.retry_at + index * self.spacing


class Limiter(Protocol):
    """Global limits per transport; ``now`` is the caller's clock (aware datetime)."""

    def acquire(self, transport: str, wanted: int, *, now: datetime) -> Allowance:
        """Atomically take min(wanted, tokens, quota left) and count them against the quota."""
        ...

    def refund(self, transport: str, unused: int, *, now: datetime) -> None:
        """Give back tokens and quota granted but not used; pass the ``now`` given to acquire."""
        ...

    def pause(self, transport: str, *, until: datetime, reason: str) -> None:
        """Provider push-back: grant nothing until ``until`` (the later of two pauses wins)."""
        ...

    def connection(
        self, transport: str, *, now: datetime, lease: timedelta
    ) -> AbstractContextManager[bool]:
        """A slot for one connection; yields False at the cap; the slot expires after ``lease``."""
        ...


class Limit(IntEnum):
    """Which limit refused part of a request; the Redis script returns these numbers."""

    NONE = 0
    PAUSE = 1
    QUOTA = 2
    RATE = 3


def decide(wanted: int, tokens: float | None, quota_left: int | None) -> tuple[int, Limit]:
    """How many of ``wanted`` to grant, and which limit refused the rest."""
    available = wanted if tokens is None else min(wanted, math.floor(tokens))
    left = wanted if quota_left is None else max(0, quota_left)
    granted = min(available, left)
    if granted == wanted:
        return granted, Limit.NONE
    # When the quota binds, the refused messages wait for tomorrow, not for the next token.
    return granted, Limit.QUOTA if left <= available else Limit.RATE


def quota_day(now: datetime, zone: ZoneInfo) -> tuple[str, datetime]:
    """The local calendar day of ``now`` (YYYY-MM-DD) and the local midnight that ends it."""
    day = now.astimezone(zone).date()
    # combine() keeps wall-clock arithmetic, so a 23- or 25-hour DST day ends at its midnight.
    return day.isoformat(), datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)


def allowance(
    limits: TransportLimits,
    *,
    now: datetime,
    granted: int,
    limit: Limit,
    tokens_left: float = 0.0,
    paused: tuple[datetime, str] | None = None,
) -> Allowance:
    """The ``Allowance`` that both limiters return for the outcome of one acquire."""
    if limit is Limit.NONE:
        return Allowance(granted, None, timedelta(0), None)
    if limit is Limit.PAUSE:
        assert paused is not None
        until, why = paused
        reason = f"paused by provider until {until.isoformat(timespec='seconds')}: {why}"
        return Allowance(0, until, timedelta(0), reason)
    if limit is Limit.QUOTA:
        _, reset = quota_day(now, limits.zone)
        resets = reset.isoformat(timespec="minutes")
        reason = f"daily quota {limits.daily_quota} reached (resets {resets})"
        return Allowance(granted, reset.astimezone(UTC), timedelta(0), reason)
    rate = limits.rate_per_second
    assert rate is not None
    # Rounded up: a retry a fraction of a microsecond early would find no whole token yet.
    wait = math.ceil(max(0.0, 1.0 - tokens_left) * _PER_SECOND / rate)
    retry_at = now.astimezone(UTC) + timedelta(microseconds=wait)
    return Allowance(granted, retry_at, timedelta(seconds=1 / rate), f"rate limit {rate:g}/s")


def micros(moment: datetime) -> int:
    """``moment`` in whole microseconds since the epoch; a naive datetime is refused."""
    if moment.tzinfo is None:
        raise ValueError("limits need timezone-aware datetimes (use postroom.db.utcnow())")
    return (moment - _EPOCH) // _MICROSECOND


def refilled(tokens: float, *, elapsed: int, rate: float, capacity: int) -> float:
    """The tokens after ``elapsed`` microseconds; the Lua script repeats this expression."""
    return min(float(capacity), tokens + elapsed * rate / _PER_SECOND)


def short_reason(reason: str) -> str:
    """A provider's reply trimmed to one line that fits an event row and a log line."""
    return " ".join(reason.split())[:_MAX_REASON_CHARS]


@dataclass
class _Bucket:
    tokens: float
    at: int  # microseconds since the epoch of the last refill; never moves backwards


class LocalLimiter:
    """The same limits for a single process, held in memory; thread-safe."""

    def __init__(self, limits: Mapping[str, TransportLimits]) -> None:
        self._limits = dict(limits)
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._used: dict[tuple[str, str], int] = {}  # (transport, local day) -> sent that day
        self._pauses: dict[str, tuple[datetime, str]] = {}
        self._slots: dict[str, dict[str, int]] = {}  # transport -> {slot id: lease end}

    def acquire(self, transport: str, wanted: int, *, now: datetime) -> Allowance:
        """Atomically take min(wanted, tokens, quota left) and count them against the quota."""
        limits = self._limits.get(transport, NO_LIMITS)
        at = micros(now)
        if wanted <= 0:
            return allowance(limits, now=now, granted=0, limit=Limit.NONE)
        with self._lock:
            paused = self._pauses.get(transport)
            if paused is not None and paused[0] > now:
                return allowance(limits, now=now, granted=0, limit=Limit.PAUSE, paused=paused)
            bucket = self._refill(transport, limits, at)
            day = quota_day(now, limits.zone)[0] if limits.daily_quota is not None else ""
            left = None
            if limits.daily_quota is not None:
                left = limits.daily_quota - self._used.get((transport, day), 0)
            tokens = bucket.tokens if bucket is not None else None
            granted, limit = decide(wanted, tokens, left)
            if bucket is not None:
                bucket.tokens -= granted
            if left is not None:
                self._forget_other_days(transport, day)
                self._used[transport, day] = self._used.get((transport, day), 0) + granted
            tokens_left = bucket.tokens if bucket is not None else 0.0
        return allowance(limits, now=now, granted=granted, limit=limit, tokens_left=tokens_left)

    def refund(self, transport: str, unused: int, *, now: datetime) -> None:
        """Give back tokens and quota granted but not used; pass the ``now`` given to acquire."""
        limits = self._limits.get(transport, NO_LIMITS)
        if unused <= 0:
            return
        with self._lock:
            bucket = self._buckets.get(transport)
            if bucket is not None and limits.capacity is not None:
                bucket.tokens = min(float(limits.capacity), bucket.tokens + unused)
            if limits.daily_quota is not None:
                key = (transport, quota_day(now, limits.zone)[0])
                self._used[key] = max(0, self._used.get(key, 0) - unused)

    def pause(self, transport: str, *, until: datetime, reason: str) -> None:
        """Provider push-back: grant nothing until ``until`` (the later of two pauses wins)."""
        micros(until)
        until = until.astimezone(UTC)
        with self._lock:
            current = self._pauses.get(transport)
            if current is None or until > current[0]:
                self._pauses[transport] = (until, short_reason(reason))

    @contextmanager
    def connection(self, transport: str, *, now: datetime, lease: timedelta) -> Iterator[bool]:
        """A slot for one connection; yields False at the cap; the slot expires after ``lease``."""
        cap = self._limits.get(transport, NO_LIMITS).max_connections
        if cap is None:
            yield True
            return
        at = micros(now)
        slot = uuid.uuid4().hex
        with self._lock:
            slots = self._slots.setdefault(transport, {})
            for expired in [s for s, until in slots.items() if until <= at]:
                del slots[expired]
            granted = len(slots) < cap
            if granted:
                slots[slot] = at + lease // _MICROSECOND
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._slots[transport].pop(slot, None)

    def _refill(self, transport: str, limits: TransportLimits, at: int) -> _Bucket | None:
        rate, capacity = limits.rate_per_second, limits.capacity
        if rate is None or capacity is None:
            return None
        bucket = self._buckets.setdefault(transport, _Bucket(float(capacity), at))
        if at > bucket.at:
            elapsed = at - bucket.at
            bucket.tokens = refilled(bucket.tokens, elapsed=elapsed, rate=rate, capacity=capacity)
            bucket.at = at
        return bucket

    def _forget_other_days(self, transport: str, day: str) -> None:
        # Only today's counter matters; older ones would otherwise pile up for ever.
        for key in [k for k in self._used if k[0] == transport and k[1] != day]:
            del self._used[key]


_RATE_HINT = re.compile(
    r"\brate\b|ratelimit|throttl|too many (?!recipients)|too fast|slow down|"
    r"try (?:again )?later|busy|volume|(?:sending|message|connection|hourly|daily) limit",
    re.IGNORECASE,
)
# Replies about one recipient (mailbox full, too many recipients) or the server's disk say
# nothing about our pace: pausing the whole transport for them would stall everyone's mail.
_NOT_ABOUT_PACE = re.compile(r"mailbox|recipient|over quota|storage|disk", re.IGNORECASE)


def pushback_until(
    code: int | None,
    detail: str,
    *,
    now: datetime,
    retry_after: float | None = None,
    default: timedelta = timedelta(seconds=30),
) -> datetime | None:
    """When a provider's reply asks the whole transport to slow down: the end of the pause.

    HTTP 429 always does, for ``retry_after`` seconds (clamped to 1 s .. 1 day) or ``default``.
    SMTP 421 and 452 do only when the text speaks of rate, throttling or too many messages or
    connections, and not of a mailbox, recipient or disk; they pause for ``default``. Every
    other reply returns ``None``: it concerns one message, and retry.py handles it.
    """
    if code == 429:
        if retry_after is None:
            return now + default
        wait = timedelta(seconds=retry_after)
        return now + min(max(wait, timedelta(seconds=1)), _MAX_PUSHBACK)
    if code in (421, 452) and _RATE_HINT.search(detail) and not _NOT_ABOUT_PACE.search(detail):
        return now + default
    return None


def redis_url_for_limits(settings: Settings) -> str | None:
    """The Redis that holds the limits: ``limits_redis_url``, else a Redis broker, else None."""
    if settings.limits_redis_url:
        return settings.limits_redis_url
    # The embedded default is a Redis broker too: its prefork worker is several processes,
    # and only a shared store keeps their limits global.
    broker = settings.resolved_broker_url
    if broker.startswith("redis+socket://"):
        return "unix://" + broker.removeprefix("redis+socket://")
    if broker.startswith(_REDIS_SCHEMES):
        return broker
    return None


def limiter_for(settings: Settings, redis_url: str | None) -> Limiter:
    """A ``RedisLimiter`` when a Redis URL is given, else a ``LocalLimiter``."""
    if redis_url is None:
        if any(limits != NO_LIMITS for limits in settings.limits.values()):
            logger.warning("no Redis for limits: they hold per worker process, not globally")
        return LocalLimiter(settings.limits)
    import redis  # only workers need it; keeps importing settings light

    from postroom.limits_redis import RedisLimiter

    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=settings.broker_timeout_seconds,
        socket_connect_timeout=settings.broker_timeout_seconds,
    )
    return RedisLimiter(client, settings.limits)
