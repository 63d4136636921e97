"""The ground every adapter stands on: the engine factory, the result shape, whole seconds,
the default retry budget, and ``engine_from_env`` (what the ``adapters/`` projects use).

The outcome mapping and the backoff live one layer up, in ``_kit.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from .._classify import MAX_RETRY_AFTER
from .._config import Limits, Provider
from .._engine import Engine
from .._errors import ConfigError
from .._result import SendResult
from ..ledger import ledger_from_url

__all__ = [
    "DEFAULT_MAX_TRIES",
    "DEFAULT_RETRY_BASE",
    "DEFAULT_RETRY_CAP",
    "EngineFactory",
    "build_engine",
    "check_factory",
    "engine_from_env",
    "provider_from_env",
    "result_dict",
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


def check_factory(factory: object) -> EngineFactory:
    """An adapter's ``engine_factory`` if it is callable (a zero-argument function that
    makes an Engine), else ConfigError; an Engine passed where its factory belongs is named
    as such (each worker makes its own Engine, so the adapter needs the recipe)."""
    if isinstance(factory, Engine):
        raise ConfigError(
            "the adapter needs an engine factory, not an Engine: pass `lambda: Engine(...)` (or a function"
            " that makes one), so each worker process makes and starts its own"
        )
    if not callable(factory):
        raise ConfigError(f"engine_factory must be a zero-argument callable that returns an Engine, got {factory!r}")
    return factory


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


def whole_seconds(delay: float) -> int:
    """Queues that count in whole seconds: round up, so "no earlier than asked" holds.
    A non-finite delay (a hostile ``Retry-After``) becomes ``MAX_RETRY_AFTER``."""
    if not math.isfinite(delay):
        delay = MAX_RETRY_AFTER
    return max(0, math.ceil(min(delay, MAX_RETRY_AFTER)))


def engine_from_env(env: Mapping[str, str] | None = None) -> Engine:
    """An Engine configured from environment variables (what the ``adapters/`` projects use).

    ``IDEMSEND_URL`` (required), ``IDEMSEND_API_KEY``, ``IDEMSEND_KEY`` (template, default
    ``welcome:{user_id}:{job_id}``), ``IDEMSEND_LEDGER_URL`` (any URL
    ``idemsend.ledger.ledger_from_url`` takes: ``redis://``, ``rediss://``,
    ``redis+cluster://``, ``memory://``; unset: no ledger), ``IDEMSEND_LEDGER_PREFIX``,
    ``IDEMSEND_RETRIES``, ``IDEMSEND_LEASE``, ``IDEMSEND_MAX_IN_FLIGHT``, ``IDEMSEND_TIMEOUT``,
    and the provider (``provider_from_env``): ``IDEMSEND_PROVIDER``, ``IDEMSEND_KEY_FIELD``,
    ``IDEMSEND_WEBHOOK_SECRET``.
    """
    env = os.environ if env is None else env
    url = env.get("IDEMSEND_URL")
    if not url:
        raise ConfigError("IDEMSEND_URL is not set: the provider endpoint to POST to")
    ledger = None
    ledger_url = env.get("IDEMSEND_LEDGER_URL")
    if ledger_url:
        ledger = ledger_from_url(ledger_url, prefix=env.get("IDEMSEND_LEDGER_PREFIX", "idemsend"))
    return Engine(
        url,
        key=env.get("IDEMSEND_KEY", "welcome:{user_id}:{job_id}"),
        api_key=env.get("IDEMSEND_API_KEY"),
        provider=provider_from_env(env),
        ledger=ledger,
        retry=int(env.get("IDEMSEND_RETRIES", "3")),
        lease=float(env.get("IDEMSEND_LEASE", "30")),
        limits=Limits(max_in_flight=int(env.get("IDEMSEND_MAX_IN_FLIGHT", "100"))),
        timeout=float(env.get("IDEMSEND_TIMEOUT", "10")),
    )


#: The presets ``IDEMSEND_PROVIDER`` names (``standard-webhooks`` takes its secret from
#: ``IDEMSEND_WEBHOOK_SECRET``).
_PRESETS: dict[str, Callable[[], Provider]] = {
    "sendoka": Provider.sendoka, "stripe": Provider.stripe, "resend": Provider.resend, "ietf": Provider.ietf,
    "square": Provider.square, "plaid": Provider.plaid, "brevo": Provider.brevo, "adyen": Provider.adyen,
    "paypal": Provider.paypal, "checkout": Provider.checkout, "gocardless": Provider.gocardless,
    "increase": Provider.increase, "sparkpost": Provider.sparkpost,
}


def provider_from_env(env: Mapping[str, str]) -> Provider:
    """The ``Provider`` the environment names: ``IDEMSEND_PROVIDER`` a preset
    (``sendoka``, the default; ``stripe``, ``square``, ... or ``standard-webhooks`` with
    ``IDEMSEND_WEBHOOK_SECRET``, several secrets space-separated), ``IDEMSEND_KEY_FIELD`` a
    dotted path into the body the key goes into instead of a header."""
    name = env.get("IDEMSEND_PROVIDER", "sendoka").strip().lower().replace("_", "-")
    if name == "standard-webhooks":
        secrets = env.get("IDEMSEND_WEBHOOK_SECRET", "").split()
        if not secrets:
            raise ConfigError("IDEMSEND_PROVIDER=standard-webhooks needs IDEMSEND_WEBHOOK_SECRET (whsec_...)")
        provider = Provider.standard_webhooks(secrets)
    elif name in _PRESETS:
        provider = _PRESETS[name]()
    else:
        known = ", ".join(["standard-webhooks", *_PRESETS])
        raise ConfigError(f"IDEMSEND_PROVIDER={name!r} is not a preset; known: {known}")
    field = env.get("IDEMSEND_KEY_FIELD")
    if field:
        provider = dataclasses.replace(provider, key_field=field)
    return provider
