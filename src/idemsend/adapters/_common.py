"""What every adapter shares: the result shape and the retry delay rule."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from .._engine import Engine
from .._errors import ConfigError, RetryableError
from .._result import SendResult

__all__ = ["EngineFactory", "build_engine", "default_retry_delay", "engine_from_env", "result_dict", "whole_seconds"]

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


def default_retry_delay(error: RetryableError, attempt: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """The provider's ``retry_after`` when it gave one, else exponential from ``base``."""
    if error.retry_after is not None:
        return error.retry_after
    return min(cap, base * 2.0 ** max(attempt - 1, 0))


def whole_seconds(delay: float) -> int:
    """Queues that count in whole seconds: round up, so "no earlier than asked" holds."""
    return max(0, math.ceil(delay))


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
        retries=int(env.get("IDEMSEND_RETRIES", "3")),
        lease=float(env.get("IDEMSEND_LEASE", "30")),
        max_in_flight=int(env.get("IDEMSEND_MAX_IN_FLIGHT", "100")),
        timeout=float(env.get("IDEMSEND_TIMEOUT", "10")),
    )
