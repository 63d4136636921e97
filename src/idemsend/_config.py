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

import math
import random
from dataclasses import dataclass, field

from ._classify import IETFDraft, Resend, ResultClassifier, Sendoka, Stripe
from ._errors import ConfigError
from ._keys import DEFAULT_MAX_KEY_LENGTH

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

    Presets: ``Provider.sendoka()`` (the default), ``Provider.stripe()``,
    ``Provider.resend()``, ``Provider.ietf()``. See docs/providers.md.
    """

    classifier: ResultClassifier = field(default_factory=Sendoka)
    idempotency_header: str = "Idempotency-Key"
    window: float = DAY
    stale_margin: float = 3600.0
    max_key_length: int = DEFAULT_MAX_KEY_LENGTH

    def __post_init__(self) -> None:
        if not isinstance(self.classifier, ResultClassifier):
            raise ConfigError(f"classifier must have classify(response) -> Outcome, got {self.classifier!r}")
        header = self.idempotency_header
        if not isinstance(header, str) or not header.strip() or any(c in header for c in ":\r\n "):
            raise ConfigError(f"idempotency_header must be a header name, got {header!r}")
        check_number("window", self.window, minimum=0, exclusive=True, maximum=365 * DAY)
        check_number("stale_margin", self.stale_margin, minimum=0)
        check_number("max_key_length", self.max_key_length, minimum=1, integer=True, maximum=65_536)
        if self.stale_margin >= self.window:
            raise ConfigError(
                f"stale_margin ({self.stale_margin:g}s) must be smaller than the provider window ({self.window:g}s)"
            )

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
