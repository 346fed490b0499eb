from __future__ import annotations

import random
from datetime import timedelta

import pytest

from postroom.retry import RetryPolicy


def test_backoff_doubles_within_equal_jitter_and_stops_at_the_cap():
    policy = RetryPolicy(max_attempts=10, base_delay_seconds=10, max_delay_seconds=60)
    rng = random.Random(7)
    for attempts, ceiling in [(1, 10), (2, 20), (3, 40), (4, 60), (9, 60)]:
        delays = [policy.delay_after(attempts, rng=rng) for _ in range(200)]
        assert all(
            timedelta(seconds=ceiling / 2) <= d <= timedelta(seconds=ceiling) for d in delays
        )
        assert len(set(delays)) > 100  # jittered, not one fixed value


def test_exhaustion_counts_attempts_made():
    policy = RetryPolicy(max_attempts=3)
    assert not policy.is_exhausted(2)
    assert policy.is_exhausted(3)


def test_nonsense_policies_are_refused():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
