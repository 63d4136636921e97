"""What every adapter shares: the result shape and the retry delay rule."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

from .._classify import MAX_RETRY_AFTER
from .._config import Limits
from .._engine import Engine
from .._errors import ConfigError, RetryableError
from .._result import SendResult

__all__ = [
    "DEFAULT_MAX_TRIES",
    "DEFAULT_RETRY_BASE",
    "DEFAULT_RETRY_CAP",
    "EngineFactory",
    "build_engine",
    "default_retry_delay",
    "engine_from_env",
    "result_dict",
    "retry_span",
    "whole_seconds",
]

#: Tries a job gets by default in every adapter (arq ``max_tries``; RQ ``max_retries`` + 1).
DEFAULT_MAX_TRIES = 10
#: The first retry's delay when neither the provider nor the engine named one (seconds).
DEFAULT_RETRY_BASE = 1.0
#: The longest delay between two tries from the adapters' own backoff (seconds).
DEFAULT_RETRY_CAP = 300.0

#: Builds the one Engine a worker process shares between its jobs.
EngineFactory = Callable[[], Engine]


def build_engine(factory: EngineFactory) -> Engine:
    """Call an adapter's engine factory and check that it made an Engine."""
    engine = factory()
    if not isinstance(engine, Engine):
        raise ConfigError(f"the engine factory returned {engine!r}, not an idemsend.Engine")
    return engine


def result_dict(result: SendResult) -> dict[str, Any]:
    """A plain, picklable and JSON-able form of a SendResult, what a job returns."""
    return {
        "state": "sent",
        "key": result.key,
        "id": result.id,
        "status": result.status,
        "replayed": result.replayed,
        "from_ledger": result.from_ledger,
        "attempts": result.attempts,
        "job_id": result.job_id,
    }


def _backoff(attempt: int, base: float, cap: float) -> float:
    return min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))


def default_retry_delay(
    error: RetryableError, attempt: int, *, base: float = DEFAULT_RETRY_BASE, cap: float = DEFAULT_RETRY_CAP
) -> float:
    """How long the queue should wait before the next try of a job whose try ``attempt``
    (1-based) raised ``error``.

    The provider's ``retry_after`` when it named one (clamped to ``MAX_RETRY_AFTER``);
    otherwise exponential backoff ``base * 2**(attempt-1)`` capped at ``cap``, stretched by
    up to 25% at random so jobs that failed together (a ledger or provider outage) do not
    come back together. The stretch only ever lengthens the delay, so :func:`retry_span`
    is a floor.
    """
    after = error.retry_after
    if after is not None and not math.isnan(after):
        return min(max(after, 0.0), MAX_RETRY_AFTER)
    return _backoff(attempt, base, cap) * (1.0 + random.random() / 4)


def retry_span(
    max_tries: int, *, base: float = DEFAULT_RETRY_BASE, cap: float = DEFAULT_RETRY_CAP
) -> float:
    """The shortest time from a job's first try to its last under :func:`default_retry_delay`
    when no ``retry_after`` was given: the longest outage (of the ledger or the provider)
    that a job can ride out before its retries run out. With the defaults (10 tries, 1 s
    doubling, 300 s cap) it is 511 s, about 8.5 minutes."""
    return sum(_backoff(attempt, base, cap) for attempt in range(1, max_tries))


def whole_seconds(delay: float) -> int:
    """Queues that count in whole seconds: round up, so "no earlier than asked" holds.
    A non-finite delay (a hostile ``Retry-After``) becomes ``MAX_RETRY_AFTER``."""
    if not math.isfinite(delay):
        delay = MAX_RETRY_AFTER
    return max(0, math.ceil(min(delay, MAX_RETRY_AFTER)))


def engine_from_env(env: Mapping[str, str] | None = None) -> Engine:
    """An Engine configured from environment variables (what the ``adapters/`` projects use).

    ``IDEMSEND_URL`` (required), ``IDEMSEND_API_KEY``, ``IDEMSEND_KEY`` (template, default
    ``welcome:{user_id}:{job_id}``), ``IDEMSEND_LEDGER_URL`` (a redis:// URL: RedisLedger;
    unset: no ledger), ``IDEMSEND_LEDGER_PREFIX``, ``IDEMSEND_RETRIES``, ``IDEMSEND_LEASE``,
    ``IDEMSEND_MAX_IN_FLIGHT``, ``IDEMSEND_TIMEOUT``.
    """
    env = os.environ if env is None else env
    url = env.get("IDEMSEND_URL")
    if not url:
        raise ConfigError("IDEMSEND_URL is not set: the provider endpoint to POST to")
    ledger = None
    ledger_url = env.get("IDEMSEND_LEDGER_URL")
    if ledger_url:
        from ..ledger._redis import RedisLedger

        ledger = RedisLedger.from_url(ledger_url, prefix=env.get("IDEMSEND_LEDGER_PREFIX", "idemsend"))
    return Engine(
        url,
        key=env.get("IDEMSEND_KEY", "welcome:{user_id}:{job_id}"),
        api_key=env.get("IDEMSEND_API_KEY"),
        ledger=ledger,
        retry=int(env.get("IDEMSEND_RETRIES", "3")),
        lease=float(env.get("IDEMSEND_LEASE", "30")),
        limits=Limits(max_in_flight=int(env.get("IDEMSEND_MAX_IN_FLIGHT", "100"))),
        timeout=float(env.get("IDEMSEND_TIMEOUT", "10")),
    )
