from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from postroom.limits import (
    Allowance,
    Limiter,
    LocalLimiter,
    TransportLimits,
    connections_key,
    limiter_for,
    pause_key,
    pushback_until,
    quota_key,
    rate_key,
    redis_url_for_limits,
)
from postroom.limits_redis import RedisLimiter
from postroom.settings import Settings
from tests.servers import RedisServer

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Limiters:
    """Builds limiters of one kind; ``many`` gives workers that share one set of limits."""

    def __init__(self, kind: str, server: RedisServer | None) -> None:
        self.kind = kind
        self.server = server
        self.clients: list[Any] = []

    def one(self, limits: Mapping[str, TransportLimits]) -> Limiter:
        return self.many(limits, 1)[0]

    def many(self, limits: Mapping[str, TransportLimits], count: int) -> list[Limiter]:
        if self.server is None:
            return [LocalLimiter(limits)] * count  # threads of one process share one limiter
        self.clients += [self.server.client() for _ in range(count)]
        return [RedisLimiter(client, limits) for client in self.clients[-count:]]


@pytest.fixture(params=["local", "redis"])
def limiters(request: pytest.FixtureRequest) -> Iterator[Limiters]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    made = Limiters(request.param, server)
    yield made
    for client in made.clients:
        client.close()


def smtp(**fields: Any) -> dict[str, TransportLimits]:
    return {"smtp": TransportLimits(**fields)}


def test_a_transport_without_limits_is_granted_everything(limiters: Limiters):
    limiter = limiters.one(smtp(rate_per_second=1))
    assert limiter.acquire("postmark", 500, now=T0) == Allowance(500, None, timedelta(0), None)
    with limiter.connection("postmark", now=T0, lease=timedelta(seconds=5)) as slot:
        assert slot is True


def test_a_full_bucket_grants_its_burst_then_refills_at_the_rate(limiters: Limiters):
    limiter = limiters.one(smtp(rate_per_second=10, burst=5))
    first = limiter.acquire("smtp", 20, now=T0)
    assert first == Allowance(5, at(0.1), timedelta(seconds=0.1), "rate limit 10/s")
    later = limiter.acquire("smtp", 20, now=at(0.25))
    assert later.granted == 2
    assert later.retry_at == at(0.3)  # half a token was left over
    assert limiter.acquire("smtp", 20, now=at(60)).granted == 5  # never more than the burst
    assert limiter.acquire("smtp", 3, now=at(60.5)) == Allowance(3, None, timedelta(0), None)


def test_refused_messages_are_spread_one_token_apart(limiters: Limiters):
    limiter = limiters.one(smtp(rate_per_second=4, burst=1))
    allowance = limiter.acquire("smtp", 4, now=T0)
    assert allowance.granted == 1
    assert allowance.spacing == timedelta(seconds=0.25)
    refused = [allowance.retry_at_of(i) for i in range(3)]
    assert refused == [at(0.25), at(0.5), at(0.75)]
    for moment in refused:
        assert limiter.acquire("smtp", 1, now=moment).granted == 1


def test_the_default_burst_keeps_any_second_at_a_tenth_over_the_rate():
    assert TransportLimits(rate_per_second=10).capacity == 1
    assert TransportLimits(rate_per_second=250).capacity == 25
    assert TransportLimits(rate_per_second=0.5).capacity == 1
    assert TransportLimits(rate_per_second=10, burst=40).capacity == 40
    assert TransportLimits().capacity is None


QUOTA_DAYS = [
    # time zone, a moment in the day, the next local midnight in UTC
    ("UTC", datetime(2026, 11, 23, 9, 0, tzinfo=UTC), datetime(2026, 11, 24, 0, 0, tzinfo=UTC)),
    (
        "Europe/Paris",
        datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        datetime(2026, 11, 23, 23, 0, tzinfo=UTC),
    ),
    # 00:30 on 29 March in Paris, a 23-hour day: clocks go from 02:00 to 03:00
    (
        "Europe/Paris",
        datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 22, 0, tzinfo=UTC),
    ),
    # 25 October in Paris, a 25-hour day
    (
        "Europe/Paris",
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 23, 0, tzinfo=UTC),
    ),
    (
        "America/New_York",
        datetime(2026, 11, 1, 4, 30, tzinfo=UTC),
        datetime(2026, 11, 2, 5, 0, tzinfo=UTC),
    ),
]


@pytest.mark.parametrize(("timezone", "start", "midnight"), QUOTA_DAYS)
def test_a_daily_quota_sends_exactly_its_size_and_defers_the_rest_to_local_midnight(
    limiters: Limiters, timezone: str, start: datetime, midnight: datetime
):
    limiter = limiters.one(smtp(daily_quota=500, timezone=timezone))
    queued, sent, now = 600, 0, start
    while True:
        allowance = limiter.acquire("smtp", min(queued, 70), now=now)
        sent, queued = sent + allowance.granted, queued - allowance.granted
        if allowance.retry_at is not None:
            break
        now += timedelta(minutes=1)
    assert (sent, queued) == (500, 100)
    assert allowance.retry_at == midnight
    assert allowance.spacing == timedelta(0)
    local_midnight = midnight.astimezone(TransportLimits(timezone=timezone).zone)
    assert allowance.reason == (
        f"daily quota 500 reached (resets {local_midnight.isoformat(timespec='minutes')})"
    )
    just_before = midnight - timedelta(seconds=1)
    assert limiter.acquire("smtp", 1, now=just_before).retry_at == midnight
    assert limiter.acquire("smtp", 100, now=midnight).granted == 100
    assert limiter.acquire("smtp", 400, now=midnight + timedelta(hours=20)).granted == 400
    assert limiter.acquire("smtp", 1, now=midnight + timedelta(hours=20)).granted == 0


def test_the_quota_names_the_limit_that_binds(limiters: Limiters):
    limiter = limiters.one(smtp(rate_per_second=10, burst=10, daily_quota=12))
    rate_bound = limiter.acquire("smtp", 20, now=T0)
    assert (rate_bound.granted, rate_bound.reason) == (10, "rate limit 10/s")
    quota_bound = limiter.acquire("smtp", 20, now=at(60))
    assert quota_bound.granted == 2
    assert quota_bound.reason is not None
    assert quota_bound.reason.startswith("daily quota 12 reached")
    assert quota_bound.retry_at == datetime(2026, 11, 24, tzinfo=UTC)


def test_a_refund_returns_tokens_and_quota(limiters: Limiters):
    limiter = limiters.one(smtp(rate_per_second=1, burst=10, daily_quota=15))
    assert limiter.acquire("smtp", 10, now=T0).granted == 10
    limiter.refund("smtp", 4, now=T0)  # claimed only 6 of the 10
    assert limiter.acquire("smtp", 10, now=T0).granted == 4
    limiter.refund("smtp", 100, now=T0)  # never beyond the bucket or below zero
    assert limiter.acquire("smtp", 20, now=T0).granted == 10
    limiter.refund("smtp", 3, now=T0)
    assert limiter.acquire("smtp", 20, now=at(600)).granted == 8  # quota left: 15 - 10 + 3


def test_a_provider_pause_grants_nothing_until_it_ends(limiters: Limiters):
    limiter = limiters.one(smtp(rate_per_second=10, burst=10))
    limiter.pause("smtp", until=at(30), reason="421 4.7.0 Too many messages,\r\n slow down")
    paused = limiter.acquire("smtp", 5, now=at(1))
    assert paused.granted == 0
    assert paused.retry_at == at(30)
    assert paused.reason == (
        "paused by provider until 2026-11-23T12:00:30+00:00: 421 4.7.0 Too many messages, slow down"
    )
    limiter.pause("smtp", until=at(10), reason="shorter")  # the later pause wins
    assert limiter.acquire("smtp", 5, now=at(20)).retry_at == at(30)
    limiter.pause("smtp", until=at(40), reason="longer")
    assert limiter.acquire("smtp", 5, now=at(35)).retry_at == at(40)
    assert limiter.acquire("smtp", 15, now=at(40)).granted == 10  # the paused asks took nothing


def test_a_pause_applies_to_a_transport_without_limits(limiters: Limiters):
    limiter = limiters.one({})
    limiter.pause("postmark", until=at(5), reason="429")
    assert limiter.acquire("postmark", 5, now=T0).granted == 0
    assert limiter.acquire("postmark", 5, now=at(5)).granted == 5


def test_the_connection_cap_holds_and_an_expired_lease_frees_its_slot(limiters: Limiters):
    limiter = limiters.one(smtp(max_connections=2))
    lease = timedelta(seconds=10)
    with limiter.connection("smtp", now=T0, lease=lease) as first:
        with (
            limiter.connection("smtp", now=T0, lease=lease) as second,
            limiter.connection("smtp", now=T0, lease=lease) as third,
        ):
            assert (first, second, third) == (True, True, False)
        with limiter.connection("smtp", now=at(1), lease=lease) as again:
            assert again is True
    # Two holders die without releasing: their slots stay taken until their leases end.
    held = [limiter.connection("smtp", now=at(100), lease=lease) for _ in range(2)]
    assert [slot.__enter__() for slot in held] == [True, True]
    with limiter.connection("smtp", now=at(109), lease=lease) as during:
        assert during is False
    with limiter.connection("smtp", now=at(110), lease=lease) as after:
        assert after is True


def run_workers(workers: list[Limiter], body: Callable[[Limiter], None]) -> None:
    errors: list[BaseException] = []

    def run(limiter: Limiter) -> None:
        try:
            body(limiter)
        except BaseException as error:
            errors.append(error)
            raise

    threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors


def test_workers_together_never_exceed_the_rate_in_any_second(limiters: Limiters):
    # The acceptance "10 msgs/s shared by 2 workers x 4: no 1-second window above 11", at the
    # limiter: 8 workers ask every simulated 50 ms for 6 simulated seconds.
    workers = limiters.many(smtp(rate_per_second=10), 8)
    step, steps = 0.05, 120
    barrier = threading.Barrier(len(workers))
    granted = [0] * steps
    lock = threading.Lock()

    def work(limiter: Limiter) -> None:
        for i in range(steps):
            barrier.wait(timeout=10)  # every worker asks at step i before any asks at i + 1
            allowance = limiter.acquire("smtp", 4, now=at(i * step))
            with lock:
                granted[i] += allowance.granted

    run_workers(workers, work)
    windows = [sum(granted[i : i + 21]) for i in range(steps - 20)]  # every closed 1-s window
    assert max(windows) == 11
    assert sum(granted) == 60  # the rate is reached too: 1 token at the start, then 10/s


def test_workers_together_send_exactly_the_daily_quota(limiters: Limiters):
    workers = limiters.many(smtp(daily_quota=500), 8)
    totals: list[int] = []

    def work(limiter: Limiter) -> None:
        sent = 0
        while (allowance := limiter.acquire("smtp", 7, now=T0)).granted:
            sent += allowance.granted
        totals.append(sent)

    run_workers(workers, work)
    assert sum(totals) == 500


def test_redis_keys_and_their_expiry(redis_server: RedisServer):
    client = redis_server.client()
    limiter = RedisLimiter(
        client, smtp(rate_per_second=10, burst=10, daily_quota=50, max_connections=2)
    )
    limiter.acquire("smtp", 3, now=T0)
    limiter.pause("smtp", until=at(30), reason="429")
    slot = limiter.connection("smtp", now=T0, lease=timedelta(seconds=5))
    assert rate_key("smtp") == "postroom:rate:smtp"
    assert quota_key("smtp", "2026-11-23") == "postroom:quota:smtp:2026-11-23"
    assert (pause_key("smtp"), connections_key("smtp")) == (
        "postroom:pause:smtp",
        "postroom:conn:smtp",
    )
    assert int(client.get("postroom:quota:smtp:2026-11-23")) == 3
    assert float(client.hget("postroom:rate:smtp", "tokens")) == 7
    assert 0 < client.ttl("postroom:quota:smtp:2026-11-23") <= 2 * 24 * 3600
    assert client.ttl("postroom:rate:smtp") > 0
    assert client.ttl("postroom:pause:smtp") > 0
    with slot:
        assert client.zcard("postroom:conn:smtp") == 1
    assert client.zcard("postroom:conn:smtp") == 0
    client.close()


def test_a_redis_that_forgot_the_scripts_loads_them_again(redis_server: RedisServer):
    client = redis_server.client()
    limiter = RedisLimiter(client, smtp(rate_per_second=10, burst=10))
    assert limiter.acquire("smtp", 4, now=T0).granted == 4
    client.script_flush()  # what a restarted Redis looks like to a running worker
    assert limiter.acquire("smtp", 10, now=T0).granted == 6
    client.close()


def test_naive_datetimes_are_refused(limiters: Limiters):
    limiter = limiters.one(smtp(rate_per_second=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        limiter.acquire("smtp", 1, now=datetime(2026, 11, 23, 12, 0))


def test_limits_are_read_from_an_env_file(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        'POSTROOM_LIMITS=\'{"smtp": {"rate_per_second": 10, "daily_quota": 2000,'
        ' "timezone": "Europe/Paris"}}\'\n'
        "POSTROOM_LIMITS_REDIS_URL=redis://:s3cret@limits.example:6379/2\n"
    )
    settings = Settings(_env_file=env_file)
    assert settings.limits == {
        "smtp": TransportLimits(rate_per_second=10, daily_quota=2000, timezone="Europe/Paris")
    }
    assert settings.limits["smtp"].capacity == 1
    assert redis_url_for_limits(settings) == "redis://:s3cret@limits.example:6379/2"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
        ({"timezone": "../etc/passwd"}, "unknown time zone"),
        ({"burst": 5}, "burst needs rate_per_second"),
        ({"rate_per_second": 0}, "greater than 0"),
        ({"daily_quota": 500, "quota": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_limits_are_refused_when_settings_are_read(limits: dict[str, Any], message: str):
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, limits={"smtp": limits})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"broker_url": "redis://broker:6379/0"}, "redis://broker:6379/0"),
        ({"broker_url": "rediss://broker:6380/0"}, "rediss://broker:6380/0"),
        ({"broker_url": "redis+socket:///run/redis.sock"}, "unix:///run/redis.sock"),
        ({"broker_url": "amqp://guest@rabbit//"}, None),
        (
            {"broker_url": "amqp://guest@rabbit//", "limits_redis_url": "redis://limits/1"},
            "redis://limits/1",
        ),
    ],
)
def test_the_limits_live_in_the_broker_when_it_is_redis(fields: dict[str, Any], expected: str):
    assert redis_url_for_limits(Settings(_env_file=None, **fields)) == expected


def test_the_embedded_broker_holds_the_limits_of_its_prefork_worker(tmp_path: Path):
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert redis_url_for_limits(settings) == f"unix://{tmp_path.resolve()}/redis.sock"


def test_limiter_for_picks_redis_when_there_is_a_url(redis_server: RedisServer):
    settings = Settings(_env_file=None, limits={"smtp": {"daily_quota": 3}})
    local = limiter_for(settings, None)
    shared = limiter_for(settings, redis_server.url)
    assert isinstance(local, LocalLimiter)
    assert isinstance(shared, RedisLimiter)
    assert shared.acquire("smtp", 5, now=T0).granted == 3
    assert limiter_for(settings, redis_server.url).acquire("smtp", 5, now=T0).granted == 0


NOW = T0


@pytest.mark.parametrize(
    ("code", "detail", "retry_after", "expected"),
    [
        (429, "Too Many Requests", 12, NOW + timedelta(seconds=12)),
        (429, "Too Many Requests", None, NOW + timedelta(seconds=30)),
        (429, "", 0, NOW + timedelta(seconds=1)),
        (429, "", 10**9, NOW + timedelta(days=1)),
        (421, "4.7.0 Try again later, closing connection.", None, NOW + timedelta(seconds=30)),
        (421, "4.7.28 unusual rate of unsolicited mail", None, NOW + timedelta(seconds=30)),
        (
            421,
            "[TSS04] Messages temporarily deferred due to unexpected volume",
            None,
            NOW + timedelta(seconds=30),
        ),
        (452, "4.7.1 Too many messages in this session", None, NOW + timedelta(seconds=30)),
        (421, "4.3.2 Service shutting down", None, None),
        (452, "4.5.3 Too many recipients", None, None),
        (452, "4.2.2 Mailbox full, try again later", None, None),
        (452, "4.3.1 Insufficient system storage", None, None),
        (450, "4.2.1 Receiving mail at a rate that prevents additional messages", None, None),
        (503, "Service Unavailable", 5, None),
        (None, "connection refused", None, None),
    ],
)
def test_pushback_pauses_only_for_replies_about_our_pace(
    code: int | None, detail: str, retry_after: float | None, expected: datetime | None
):
    assert pushback_until(code, detail, now=NOW, retry_after=retry_after) == expected
