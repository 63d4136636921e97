"""A rate limiter that also backs off globally when the provider says 429."""

from __future__ import annotations

import asyncio
import time

from ._errors import ConfigError

__all__ = ["RateLimiter"]


class RateLimiter:
    """Spaces requests ``1/rate`` seconds apart (GCRA), allowing bursts of ``burst``.

    Each caller reserves the next slot synchronously, then sleeps until it, so the
    limiter needs no lock and stays fair under any number of coroutines.
    ``pause(seconds)`` pushes every later slot past a 429's ``Retry-After``.
    """

    __slots__ = ("_interval", "_slack", "_tat")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError(f"rate_limit must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self._interval = 1.0 / rate
        self._slack = self._interval * (burst - 1)
        self._tat = 0.0  # theoretical arrival time of the next request

    async def acquire(self) -> None:
        now = time.monotonic()
        tat = max(self._tat, now)
        self._tat = tat + self._interval
        delay = tat - self._slack - now
        if delay > 0:
            await asyncio.sleep(delay)

    def pause(self, seconds: float) -> None:
        self._tat = max(self._tat, time.monotonic() + seconds)
