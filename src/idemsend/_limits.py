"""A rate limiter that also backs off globally when the provider says 429."""

from __future__ import annotations

import asyncio
import math
import time

from ._errors import ConfigError

__all__ = ["RateLimiter"]


class RateLimiter:
    """Spaces requests ``1/rate`` seconds apart (GCRA), allowing bursts of ``burst``.

    Each caller reserves the next slot synchronously, then sleeps until it, so the
    limiter needs no lock and stays fair under any number of coroutines.
    ``pause(seconds)`` pushes every later slot past a 429's ``Retry-After``; a caller whose
    slot is further away than it may wait (``max_wait``) gets the wait back instead of a
    slot, so a long pause sends jobs back to their queue rather than holding them.
    """

    __slots__ = ("_interval", "_slack", "_tat")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ConfigError(f"rate_limit must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self._interval = 1.0 / rate
        self._slack = self._interval * (burst - 1)
        self._tat = 0.0  # theoretical arrival time of the next request

    async def acquire(self, max_wait: float = math.inf) -> float:
        """Wait for the next slot and take it (returns 0.0); or, when that slot is more than
        ``max_wait`` seconds away, take nothing and return the wait."""
        now = time.monotonic()
        tat = max(self._tat, now)
        delay = tat - self._slack - now
        if delay > max_wait:
            return delay
        self._tat = tat + self._interval
        if delay > 0:
            await asyncio.sleep(delay)
        return 0.0

    def pause(self, seconds: float) -> None:
        """Hold every later slot until ``seconds`` from now (a 429's ``Retry-After``)."""
        if math.isfinite(seconds) and seconds > 0:
            self._tat = max(self._tat, time.monotonic() + seconds)
