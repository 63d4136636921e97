"""The engine's knobs, grouped into small value objects that validate and document themselves.

```python
Engine(url, key=..., api_key=...,
       provider=Provider.stripe(),                       # what the provider does: classifier, header, window
       retry=RetryPolicy(retries=3, backoff=0.1),        # quick in-process retries (``retry=3`` works too)
       in_flight=InFlightWait(delay=0.5, budget=10.0),   # waiting on a key the provider (or a worker) holds
       limits=Limits(max_in_flight=100, rate=None),      # concurrency and rate
       timeout=10.0)                                     # seconds per HTTP request
```

Every object is frozen; every number is checked when it is made (finite, in range), so a
value that would hang or spin a worker (``delay=0``, ``inf``, ``nan``) fails at once with a
``ConfigError`` that names it.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._body import canonical_body
from ._classify import IETFDraft, Resend, ResultClassifier, Sendoka, Stripe
from ._errors import ConfigError
from ._keys import DEFAULT_MAX_KEY_LENGTH
from ._placement import keyed_body, parse_key_field
from ._presets import (
    Adyen,
    Brevo,
    Checkout,
    GoCardless,
    Increase,
    PayPal,
    Plaid,
    SparkPost,
    Square,
    StandardWebhooks,
)
from ._signing import Signer, StandardWebhooksSigner

__all__ = [
    "DAY",
    "MAX_DURATION",
    "InFlightWait",
    "Limits",
    "Provider",
    "RetryPolicy",
    "check_number",
]

DAY = 24 * 3600.0
#: The longest any timing knob may be: longer values are mistakes, and would hang a worker.
MAX_DURATION = 30 * DAY


def check_number(
    name: str, value: object, *, minimum: float, exclusive: bool = False, integer: bool = False,
    maximum: float = MAX_DURATION,
) -> None:
    """Raise ``ConfigError`` unless ``value`` is a finite number (an ``int`` when
    ``integer``; never a ``bool``) in ``[minimum, maximum]`` (``(minimum, maximum]`` when
    ``exclusive``)."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        raise ConfigError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value!r}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Quick in-process retries of a transient answer (429, 408, 5xx, a network error, a
    timeout, a 2xx that confirms nothing), before the job goes back to its queue.

    * ``retries``: how many more tries after the first (3: at most 4 requests).
    * ``backoff`` / ``max_backoff``: full-jitter exponential backoff between tries, seconds:
      a random wait in ``[0, min(max_backoff, backoff * 2**n)]`` (``n`` = failures so far - 1).
    * ``max_inline_delay``: the longest the engine waits in process; a provider's
      ``Retry-After`` (or a rate-limit slot) further away sends the job back to its queue
      at once, with ``RetryableError.retry_after`` set.
    """

    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0
    max_inline_delay: float = 5.0

    def __post_init__(self) -> None:
        check_number("retries", self.retries, minimum=0, integer=True, maximum=100)
        check_number("backoff", self.backoff, minimum=0)
        check_number("max_backoff", self.max_backoff, minimum=self.backoff)
        check_number("max_inline_delay", self.max_inline_delay, minimum=0)

    def next_delay(self, failures: int) -> float:
        """The wait before the next try after ``failures`` transient answers (>= 1)."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** min(failures - 1, 60)))

    def worst_case_wait(self) -> float:
        """The longest the retry sleeps of one send can add up to."""
        return self.retries * max(min(self.max_backoff, self.max_inline_delay), 0.0)


@dataclass(frozen=True, slots=True)
class InFlightWait:
    """Waiting on a key that is being processed: the provider's ``IDEMPOTENCY_IN_FLIGHT``
    (409), or another worker holding the key's ledger lease.

    The engine waits ``delay`` seconds times a jitter in [0.5, 1.5] between tries, for at
    most ``budget`` seconds in all (one budget per wait), then raises ``RetryableError`` so
    the queue tries later. ``delay`` must be at least 10 ms: zero would spin.
    """

    delay: float = 0.5
    budget: float = 10.0

    def __post_init__(self) -> None:
        check_number("in_flight delay", self.delay, minimum=0.01)
        check_number("in_flight budget", self.budget, minimum=0)

    def budgeted(self) -> WaitBudget:
        """A fresh budget for one wait."""
        return WaitBudget(self)


@dataclass(slots=True)
class WaitBudget:
    """One wait's running total, shared by every try of that wait (``InFlightWait.budgeted``)."""

    policy: InFlightWait
    waited: float = field(default=0.0)

    def next(self, hint: float | None = None) -> float | None:
        """The next jittered delay (``hint`` caps it: a lease that runs out sooner), or None
        when it would go over the budget. Counts it as waited."""
        base = self.policy.delay if hint is None else min(max(hint, 0.05), self.policy.delay)
        delay = base * random.uniform(0.5, 1.5)
        if self.waited + delay > self.policy.budget:
            return None
        self.waited += delay
        return delay

    def max_tries(self) -> int:
        """The most tries one budget allows (each delay is at least half of ``delay``)."""
        return 1 + math.floor(self.policy.budget / (self.policy.delay * 0.5))


@dataclass(frozen=True, slots=True)
class Limits:
    """How much the engine does at once.

    * ``max_in_flight``: HTTP requests in flight at once (also the connection pool size).
    * ``rate``: requests per second over the whole engine, or None for no limit. A 429's
      ``Retry-After`` also pauses every request of the engine while a rate is set.
    """

    max_in_flight: int = 100
    rate: float | None = None

    def __post_init__(self) -> None:
        check_number("max_in_flight", self.max_in_flight, minimum=1, integer=True, maximum=100_000)
        if self.rate is not None:
            check_number("rate", self.rate, minimum=0, exclusive=True, maximum=1e9)


@functools.lru_cache(maxsize=64)
def _key_path(key_field: str) -> tuple[str, ...]:
    """``parse_key_field`` once per path (``Provider.payload`` runs on every send; the path
    was checked when the Provider was made)."""
    return parse_key_field(key_field)


@dataclass(frozen=True, slots=True)
class Provider:
    """What the provider does, as facts that travel together.

    * ``classifier``: maps an HTTP answer onto sent / in flight / retry / fatal.
    * ``idempotency_header``: the request header that carries the key.
    * ``window``: how long the provider remembers a key after its first send (24 h for the
      Sendoka contract, Stripe and Resend).
    * ``stale_margin``: with a ledger, an unknown outcome older than ``window -
      stale_margin`` is not resent (``StaleReplayError``): the provider may have forgotten it.
    * ``max_key_length``: the provider's limit on a key.
    * ``key_field``: a dotted path into the JSON object body (``"idempotency_key"``,
      ``"headers.idempotencyKey"``) where the key goes instead of a header: the key is
      written into the body before it is frozen and fingerprinted, and no idempotency
      header is sent.
    * ``signer``: a ``Signer`` that adds headers to each try (a fresh timestamp and
      signature per try over the same frozen body): ``Provider.standard_webhooks(secret)``.

    Presets: ``Provider.sendoka()`` (the default), ``stripe()``, ``resend()``, ``ietf()``,
    ``standard_webhooks(secret)``, ``square()``, ``plaid()``, ``brevo()``, ``adyen()``,
    ``paypal()``, ``checkout()``, ``gocardless()``, ``increase()``, ``sparkpost()``.
    See docs/providers.md.
    """

    classifier: ResultClassifier = field(default_factory=Sendoka)
    idempotency_header: str = "Idempotency-Key"
    window: float = DAY
    stale_margin: float = 3600.0
    max_key_length: int = DEFAULT_MAX_KEY_LENGTH
    key_field: str | None = None
    signer: Signer | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.classifier, ResultClassifier):
            raise ConfigError(f"classifier must have classify(response) -> Outcome, got {self.classifier!r}")
        header = self.idempotency_header
        if not isinstance(header, str) or not header.strip() or any(c in header for c in ":\r\n "):
            raise ConfigError(f"idempotency_header must be a header name, got {header!r}")
        if self.key_field is not None:
            parse_key_field(self.key_field)
        if self.signer is not None and not isinstance(self.signer, Signer):
            raise ConfigError(f"signer must have headers(request) and secrets, got {type(self.signer).__name__}")
        check_number("window", self.window, minimum=0, exclusive=True, maximum=365 * DAY)
        check_number("stale_margin", self.stale_margin, minimum=0)
        check_number("max_key_length", self.max_key_length, minimum=1, integer=True, maximum=65_536)
        if self.stale_margin >= self.window:
            raise ConfigError(
                f"stale_margin ({self.stale_margin:g}s) must be smaller than the provider window ({self.window:g}s)"
            )

    @property
    def key_header(self) -> str | None:
        """The header that carries the key, or None when the key travels in the body."""
        return None if self.key_field is not None else self.idempotency_header

    @property
    def secrets(self) -> tuple[str, ...]:
        """The signer's secrets (what the engine's redactor must hide too)."""
        return tuple(self.signer.secrets) if self.signer is not None else ()

    def payload(self, body: Any, key: str) -> bytes:
        """The bytes every try of ``key`` sends: ``body`` serialised canonically, with the
        key written in at ``key_field`` first when the key travels in the body."""
        if self.key_field is not None:
            body = keyed_body(body, _key_path(self.key_field), key)
        return canonical_body(body)

    @classmethod
    def sendoka(cls) -> Provider:
        """The Sendoka contract (docs/provider-contract.md): 24 h window, 255-character keys."""
        return cls()

    @classmethod
    def stripe(cls) -> Provider:
        """Stripe: keys up to 255 characters, kept at least 24 hours."""
        return cls(classifier=Stripe())

    @classmethod
    def resend(cls) -> Provider:
        """Resend: keys up to 256 characters, kept 24 hours."""
        return cls(classifier=Resend(), max_key_length=256)

    @classmethod
    def ietf(cls, *, require_id: bool = False) -> Provider:
        """A server following the IETF Idempotency-Key header draft (400/409/422)."""
        return cls(classifier=IETFDraft(require_id=require_id))

    # -- the presets of issue 20 (docs/providers.md has a row and a source for each) ----

    @classmethod
    def standard_webhooks(cls, secret: str | Iterable[str], *, window: float = DAY) -> Provider:
        """A Standard Webhooks receiver: the key is ``webhook-id`` (the same on every try),
        each try is signed afresh (``webhook-timestamp``, ``webhook-signature``) with the
        ``whsec_`` secret(s) (several while rotating). Any 2xx is sent (with or without a
        body), 410 Gone stops the endpoint (a setup error, not recorded against the key).
        The spec says nothing of how long a receiver dedupes an id: ``window`` is yours."""
        return cls(
            classifier=StandardWebhooks(), idempotency_header="webhook-id", window=window,
            stale_margin=min(3600.0, window / 2), signer=StandardWebhooksSigner(secret),
        )

    @classmethod
    def square(cls) -> Provider:
        """Square: the key is the body's ``idempotency_key`` (45 characters on
        CreatePayment); a reuse with another body is ``IDEMPOTENCY_KEY_REUSED``."""
        return cls(classifier=Square(), key_field="idempotency_key", max_key_length=45)

    @classmethod
    def plaid(cls) -> Provider:
        """Plaid Transfer (``/transfer/authorization/create``): the body's
        ``idempotency_key``, 50 characters; an authorization's key "expires after 48 hours"."""
        return cls(classifier=Plaid(), key_field="idempotency_key", max_key_length=50, window=2 * DAY)

    @classmethod
    def brevo(cls) -> Provider:
        """Brevo transactional email: the body's ``headers.idempotencyKey`` (Brevo asks
        for a UUID), kept only 15 minutes: past that a resend is a new email, so run it
        with a ledger."""
        return cls(
            classifier=Brevo(), key_field="headers.idempotencyKey", window=15 * 60.0, stale_margin=60.0,
            max_key_length=255,
        )

    @classmethod
    def adyen(cls) -> Provider:
        """Adyen: ``Idempotency-Key``, 64 characters, kept at least 31 days."""
        return cls(classifier=Adyen(), max_key_length=64, window=31 * DAY)

    @classmethod
    def paypal(cls) -> Provider:
        """PayPal REST: ``PayPal-Request-Id``; a reuse answers the first request's latest
        status. How long an id is kept differs per API (see docs/providers.md)."""
        return cls(classifier=PayPal(), idempotency_header="PayPal-Request-Id", max_key_length=108)

    @classmethod
    def checkout(cls) -> Provider:
        """Checkout.com: ``Cko-Idempotency-Key``, kept 24 hours, only 2xx answers replayed;
        409 while the first request is in flight."""
        return cls(classifier=Checkout(), idempotency_header="Cko-Idempotency-Key")

    @classmethod
    def gocardless(cls) -> Provider:
        """GoCardless: ``Idempotency-Key``; a reuse is 409 ``invalid_state`` naming the
        resource the first request created (the send happened: that id is the result)."""
        return cls(classifier=GoCardless())

    @classmethod
    def increase(cls) -> Provider:
        """Increase: ``Idempotency-Key``, 200 characters, never expires (at most one
        object per key); ``Idempotent-Replayed: true`` on a replay."""
        return cls(classifier=Increase(), max_key_length=200, window=365 * DAY, stale_margin=3600.0)

    @classmethod
    def sparkpost(cls) -> Provider:
        """SparkPost: ``Idempotency-Key``, kept 24 hours; ``X-Idempotent-Replayed: true``."""
        return cls(classifier=SparkPost())
