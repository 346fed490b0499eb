"""When to try a temporarily failed message again, and when to give up."""

from __future__ import annotations

import random
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter, capped, for a bounded number of attempts."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=6, ge=1, le=100)
    base_delay_seconds: float = Field(default=10.0, ge=0)
    max_delay_seconds: float = Field(default=3600.0, ge=0)

    def is_exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` tries have been made and no other is allowed."""
        return attempts >= self.max_attempts

    def delay_after(self, attempts: int, *, rng: random.Random | None = None) -> timedelta:
        """The wait before the next try, after ``attempts`` tries have failed.

        Equal jitter (half fixed, half random) keeps a floor under the wait while spreading a
        burst of failures, so a recovering server is not hit by every deferred message at once.
        """
        exponent = max(attempts - 1, 0)
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2.0**exponent)
        spread = (rng or random).uniform(0.0, ceiling / 2.0)
        return timedelta(seconds=ceiling / 2.0 + spread)
