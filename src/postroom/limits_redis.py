"""``RedisLimiter``: the limits of ``postroom.limits`` shared by every worker through Redis.

Each operation is one Lua script, so reading and updating a bucket, a counter or the slot
set is atomic however many processes and hosts ask at once. The scripts are registered once;
redis-py sends them by SHA and loads them again after a ``NOSCRIPT`` (a restarted Redis).

Times come from the caller's ``now`` (see ``postroom.limits``), never Redis ``TIME``, so the
quota's calendar day follows the same clock as everything else. Key expiries are relative
(``EXPIRE`` seconds): an absolute expiry computed from a caller's clock could delete a key at
once when that clock is behind Redis's. The keys of one operation live on different slots, so
Redis Cluster is not supported; Celery's Redis broker is not clustered either.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import redis

from postroom.limits import (
    NO_LIMITS,
    Allowance,
    Limit,
    TransportLimits,
    allowance,
    connections_key,
    micros,
    pause_key,
    quota_day,
    quota_key,
    rate_key,
    short_reason,
)

logger = logging.getLogger(__name__)

# A day's counter must outlive its day (up to 25 hours, plus clock skew between workers).
_QUOTA_TTL_SECONDS = 2 * 24 * 3600
# A key that expires early only forgets state that had stopped mattering (a bucket that has
# refilled, a pause or a lease that has ended); this margin absorbs clock skew.
_MARGIN_SECONDS = 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# KEYS: rate, quota, pause. ARGV: now (µs), wanted, rate|'', capacity|'', quota|'', quota ttl,
# rate ttl. The refill repeats limits.refilled() operation for operation, so both agree exactly.
# Returns {granted, limit (limits.Limit), tokens left, pause until, pause reason}.
_ACQUIRE = """
local now, wanted = tonumber(ARGV[1]), tonumber(ARGV[2])
local pause = redis.call('HMGET', KEYS[3], 'until', 'reason')
if pause[1] and tonumber(pause[1]) > now then
  return {0, 1, '0', pause[1], pause[2] or ''}
end
local tokens, at = false, now
if ARGV[3] ~= '' then
  local rate, capacity = tonumber(ARGV[3]), tonumber(ARGV[4])
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  tokens = capacity
  if state[1] then
    tokens, at = tonumber(state[1]), tonumber(state[2])
    if now > at then
      tokens, at = math.min(capacity, tokens + (now - at) * rate / 1000000), now
    end
  end
end
local left = false
if ARGV[5] ~= '' then
  left = math.max(0, tonumber(ARGV[5]) - tonumber(redis.call('GET', KEYS[2]) or '0'))
end
-- limits.decide(), which LocalLimiter uses: keep the two in step.
local available = wanted
if tokens then available = math.min(wanted, math.floor(tokens)) end
local quota_left = left or wanted
local granted = math.min(available, quota_left)
local limit = 0
if granted < wanted then
  if quota_left <= available then limit = 2 else limit = 3 end
end
if tokens then
  tokens = tokens - granted
  -- %.17g: Lua's tostring keeps 14 digits, which would round the tokens and the time
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
             'at', string.format('%.17g', at))
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
if left and granted > 0 then
  redis.call('INCRBY', KEYS[2], granted)
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return {granted, limit, string.format('%.17g', tokens or 0), '', ''}
"""

# KEYS: rate, quota. ARGV: unused, capacity|'', '1' when the transport has a quota.
_REFUND = """
local unused = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local tokens = redis.call('HGET', KEYS[1], 'tokens')
  if tokens then
    local refilled = math.min(tonumber(ARGV[2]), tonumber(tokens) + unused)
    redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', refilled))
  end
end
if ARGV[3] == '1' then
  local back = math.min(unused, tonumber(redis.call('GET', KEYS[2]) or '0'))
  if back > 0 then redis.call('DECRBY', KEYS[2], back) end
end
return 0
"""

# KEYS: pause. ARGV: until, reason, ttl. The later of two pauses wins.
_PAUSE = """
local current = redis.call('HGET', KEYS[1], 'until')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'until', ARGV[1], 'reason', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: connections. ARGV: now, lease end, cap, slot id, ttl. Expired leases free their slot.
_CONNECT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _optional(value: float | None) -> str:
    return "" if value is None else repr(value)


class RedisLimiter:
    """Limits shared by every process that talks to the same Redis; safe across threads."""

    def __init__(self, client: redis.Redis, limits: Mapping[str, TransportLimits]) -> None:
        self._client = client
        self._limits = dict(limits)
        self._acquire = client.register_script(_ACQUIRE)
        self._refund = client.register_script(_REFUND)
        self._pause = client.register_script(_PAUSE)
        self._connect = client.register_script(_CONNECT)

    def acquire(self, transport: str, wanted: int, *, now: datetime) -> Allowance:
        """Atomically take min(wanted, tokens, quota left) and count them against the quota."""
        limits = self._limits.get(transport, NO_LIMITS)
        at = micros(now)
        if wanted <= 0:
            return allowance(limits, now=now, granted=0, limit=Limit.NONE)
        rate, capacity = limits.rate_per_second, limits.capacity
        # Past this the bucket is full again, which is what a missing key means.
        rate_ttl = math.ceil(capacity / rate) + _MARGIN_SECONDS if rate and capacity else 0
        keys = [rate_key(transport), self._quota_key(transport, limits, now), pause_key(transport)]
        args: list[str | int] = [at, wanted, _optional(rate), _optional(capacity)]
        args += [_optional(limits.daily_quota), _QUOTA_TTL_SECONDS, rate_ttl]
        granted, limit, tokens_left, until, reason = self._acquire(keys=keys, args=args)
        paused = None
        if limit == Limit.PAUSE:
            why = reason.decode() if isinstance(reason, bytes) else str(reason)
            paused = (_EPOCH + timedelta(microseconds=int(until)), why)
        return allowance(
            limits,
            now=now,
            granted=int(granted),
            limit=Limit(limit),
            tokens_left=float(tokens_left),
            paused=paused,
        )

    def refund(self, transport: str, unused: int, *, now: datetime) -> None:
        """Give back tokens and quota granted but not used; pass the ``now`` given to acquire."""
        limits = self._limits.get(transport, NO_LIMITS)
        if unused <= 0 or (limits.capacity is None and limits.daily_quota is None):
            return
        keys = [rate_key(transport), self._quota_key(transport, limits, now)]
        has_quota = "1" if limits.daily_quota is not None else ""
        self._refund(keys=keys, args=[unused, _optional(limits.capacity), has_quota])

    def pause(self, transport: str, *, until: datetime, reason: str) -> None:
        """Provider push-back: grant nothing until ``until`` (the later of two pauses wins)."""
        end = micros(until)
        # The pause itself is judged against callers' ``now``; the expiry only clears the key.
        ttl = max(0, math.ceil(end / 1_000_000 - time.time())) + _MARGIN_SECONDS
        self._pause(keys=[pause_key(transport)], args=[end, short_reason(reason), ttl])

    @contextmanager
    def connection(self, transport: str, *, now: datetime, lease: timedelta) -> Iterator[bool]:
        """A slot for one connection; yields False at the cap; the slot expires after ``lease``."""
        cap = self._limits.get(transport, NO_LIMITS).max_connections
        if cap is None:
            yield True
            return
        at, key, slot = micros(now), connections_key(transport), uuid.uuid4().hex
        ttl = math.ceil(lease.total_seconds()) + _MARGIN_SECONDS
        args: list[str | int] = [at, at + lease // _MICROSECOND, cap, slot, ttl]
        granted = bool(self._connect(keys=[key], args=args))
        try:
            yield granted
        finally:
            if granted:
                self._release(key, slot)

    def _release(self, key: str, slot: str) -> None:
        try:
            self._client.zrem(key, slot)
        except redis.RedisError:
            # The lease frees the slot anyway; an error here must not hide the caller's own.
            logger.warning("could not release a connection slot in %s; its lease will", key)

    @staticmethod
    def _quota_key(transport: str, limits: TransportLimits, now: datetime) -> str:
        return quota_key(transport, quota_day(now, limits.zone)[0])
