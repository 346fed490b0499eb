"""KeyCache: which checked API keys the API trusts without asking the database, and how long."""

from __future__ import annotations

from postroom.api.auth import KeyCache
from postroom.api_keys import ApiKey
from tests.api.conftest import FakeClock


def test_the_key_cache_holds_at_most_max_keys_dropping_the_oldest():
    clock = FakeClock()
    cache = KeyCache(5, max_keys=2, clock=clock)
    keys = {name: ApiKey(id=name, name=name) for name in ("a", "b", "c")}

    for name, key in keys.items():
        cache.put(name, key, checked_at=clock.now)

    assert cache.get("a") is None
    assert cache.get("b") is keys["b"]
    assert cache.get("c") is keys["c"]


def test_a_cached_key_expires_counting_from_when_its_lookup_began():
    clock = FakeClock()
    cache = KeyCache(5, clock=clock)
    key = ApiKey(id="a", name="a")

    cache.put("a", key, checked_at=clock.now - 2)

    assert cache.get("a") is key
    clock.now += 3
    assert cache.get("a") is None


def test_a_cache_of_zero_seconds_keeps_nothing():
    clock = FakeClock()
    cache = KeyCache(0, clock=clock)

    cache.put("a", ApiKey(id="a", name="a"), checked_at=clock.now)

    assert cache.get("a") is None
