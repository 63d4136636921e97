"""The adapter kit: one queue-neutral outcome per try of a job, and the queues' backoff.

Every adapter is a short translation of :data:`JobOutcome` into its queue's terms::

    outcome = await run_job(engine, Job(job_id, data), body, attempt=try_number,
                            max_attempts=max_tries, queue="arq", backoff=self.backoff)
    match outcome:
        case Succeeded(result):   return result                         # the job succeeds
        case RetryIn(delay, err): raise Retry(defer=delay) from err     # the queue retries later
        case GiveUp(err):         raise err                             # recorded, never retried

=========================  ============================================================
``Succeeded(result)``      sent (or replayed): ``result`` is ``result_dict(SendResult)``
``RetryIn(delay, error)``  a ``RetryableError`` with tries left: run the job again in
                           ``delay`` seconds (the provider's ``retry_after``, else
                           ``QueueBackoff``). A queue with its own retry schedule
                           (QStash) may read ``error.retry_after`` instead.
``GiveUp(error, ...)``     stop: a ``FatalError`` (``retryable=False``), or a
                           ``RetryableError`` on the last try (``retryable=True``), so the
                           queue records the real reason, not "max retries exceeded".
=========================  ============================================================

``outcome.maybe_sent`` (``GiveUp`` and ``RetryIn``) is the error's: True when a request
for the job's key may have run at the provider, whatever the last answer said. An
adapter's outcome record says it, and never reports such a job "not sent".

**The outcome record.** Every adapter that keeps an account of each try (RQ's
``job.meta["idemsend"]``, the SQS ``on_outcome`` record, BullMQ's job log) builds it with
:func:`outcome_record`, so the words are the same on every queue. ``state`` is
``outcome.state``:

=============  ==============================================================================
``sent``       sent or replayed: the result (``result_dict``) and ``attempt``
``retrying``   a retry is scheduled (``RetryIn``): ``reason`` (``RetryableError.reason``, one
               word), ``detail``, ``message``, ``maybe_sent``, ``attempt``, ``delay`` (seconds)
``failed``     the last try ended on a retryable error (``GiveUp``, ``retryable=True``): as
               ``retrying``, without ``delay``
``fatal``      a ``FatalError`` (``GiveUp``): ``code`` instead of ``reason``
=============  ==============================================================================

Anything else ``Engine.send`` raises (``ConfigError`` for an engine that was not started,
a bug) propagates: the queue's own failure handling applies.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from .._classify import MAX_RETRY_AFTER
from .._engine import Engine
from .._errors import ConfigError, FatalError, IdemsendError, RetryableError
from .._keys import Job
from ._common import DEFAULT_RETRY_BASE, DEFAULT_RETRY_CAP, result_dict

__all__ = [
    "DEFAULT_BACKOFF",
    "GiveUp",
    "JobOutcome",
    "OutcomeState",
    "QueueBackoff",
    "RetryIn",
    "Succeeded",
    "adapter_backoff",
    "check_retry_base",
    "check_tries",
    "outcome_record",
    "run_job",
]


def _seconds(value: object) -> bool:
    """A real, finite number of seconds in ``(0, MAX_RETRY_AFTER]``."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool)
        and math.isfinite(value) and 0 < value <= MAX_RETRY_AFTER
    )


@dataclass(frozen=True, slots=True)
class QueueBackoff:
    """The delay a queue waits before the next try of a job whose try raised ``RetryableError``.

    The provider's ``retry_after`` when it named one (clamped to ``[0, MAX_RETRY_AFTER]``);
    otherwise exponential ``base * 2**(attempt-1)`` capped at ``cap``, stretched by up to 25%
    at random so jobs that failed together (a ledger or provider outage) do not come back
    together. The stretch only lengthens a delay, so :meth:`span` is a floor.
    """

    base: float = DEFAULT_RETRY_BASE
    cap: float = DEFAULT_RETRY_CAP

    def __post_init__(self) -> None:
        for name, value in (("base", self.base), ("cap", self.cap)):
            if not _seconds(value):
                raise ConfigError(
                    f"QueueBackoff {name} must be a number of seconds in (0, {MAX_RETRY_AFTER:g}], got {value!r}"
                )

    def step(self, attempt: int) -> float:
        """The delay after try ``attempt`` (1-based) before the jitter."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 60))

    def delay(self, error: RetryableError, attempt: int) -> float:
        """How long to wait after try ``attempt`` raised ``error``: the backoff step (plus up
        to 25%), and never less than a ``retry_after`` the provider or engine named (clamped
        to ``MAX_RETRY_AFTER``). A short ``Retry-After: 1`` on every try therefore cannot
        squeeze a job's whole retry budget into seconds: ``span`` stays a floor."""
        step = self.step(attempt) * (1.0 + random.random() / 4)
        after = error.retry_after
        if isinstance(after, int | float) and not isinstance(after, bool) and not math.isnan(after):
            return max(min(max(float(after), 0.0), MAX_RETRY_AFTER), step)
        return step

    def span(self, max_tries: int) -> float:
        """The shortest time from a job's first try to its last when no ``retry_after`` is
        given: the longest outage (ledger or provider) a job rides out before its tries run
        out. With the defaults (10 tries, 1 s doubling, 300 s cap) it is 511 s, ~8.5 minutes."""
        return sum(self.step(attempt) for attempt in range(1, max_tries))


#: The adapters' default backoff: 1 s doubling, at most 300 s.
DEFAULT_BACKOFF = QueueBackoff()


#: The ``state`` of an outcome record: ``sent``; ``retrying`` (a retry is scheduled);
#: ``failed`` (the last try ended on a retryable error); ``fatal``.
OutcomeState = Literal["sent", "retrying", "failed", "fatal"]


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The send happened (or was replayed): ``result`` is what the job returns."""

    result: dict[str, Any]

    @property
    def state(self) -> OutcomeState:
        """``"sent"``."""
        return "sent"


@dataclass(frozen=True, slots=True)
class RetryIn:
    """Run the job again in ``delay`` seconds; ``error`` says why."""

    delay: float
    error: RetryableError

    @property
    def state(self) -> OutcomeState:
        """``"retrying"``: a retry is scheduled."""
        return "retrying"

    @property
    def maybe_sent(self) -> bool:
        """Whether a request for the job's key may already have run (``error.maybe_sent``)."""
        return self.error.maybe_sent


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop: record ``error`` as the job's failure and never retry it. ``retryable`` is
    True when the tries ran out on a ``RetryableError`` (the reason is still the real one)."""

    error: IdemsendError
    retryable: bool

    @property
    def state(self) -> OutcomeState:
        """``"failed"`` when the tries ran out on a retryable error, else ``"fatal"``."""
        return "failed" if self.retryable else "fatal"

    @property
    def maybe_sent(self) -> bool:
        """Whether a request for the job's key may have run at the provider
        (``error.maybe_sent``): a job given up on is then *not* known to be unsent."""
        return self.error.maybe_sent

    @property
    def code(self) -> str:
        """The reason in one word: the fatal ``code``, or the retryable ``reason``."""
        if isinstance(self.error, FatalError):
            return self.error.code
        if isinstance(self.error, RetryableError):
            return self.error.reason
        return type(self.error).__name__


#: What one try of a job comes to, in no queue's terms.
JobOutcome = Succeeded | RetryIn | GiveUp


def outcome_record(outcome: JobOutcome, *, attempt: int | None) -> dict[str, Any]:
    """A plain, JSON-able account of one try of a job, the same on every queue (see the
    module docstring's table): the result for ``Succeeded``; else ``state``, ``reason``
    (retrying, failed) or ``code`` (fatal), ``detail``, ``message``, ``maybe_sent`` and,
    for ``retrying``, ``delay`` (seconds, to the millisecond). ``attempt`` is the queue's
    try number (None: unknown)."""
    match outcome:
        case Succeeded(result):
            return {**result, "attempt": attempt}
        case RetryIn(delay, error):
            return {
                "state": outcome.state, "reason": error.reason, "detail": error.detail, "message": str(error),
                "maybe_sent": outcome.maybe_sent, "attempt": attempt, "delay": round(delay, 3),
            }
        case GiveUp(error):
            word = "reason" if outcome.retryable else "code"
            return {
                "state": outcome.state, word: outcome.code, "detail": getattr(error, "detail", ""),
                "message": str(error), "maybe_sent": outcome.maybe_sent, "attempt": attempt,
            }
    raise TypeError(f"not a JobOutcome: {outcome!r}")


async def run_job(
    engine: Engine,
    job: Job,
    body: Any,
    *,
    attempt: int | None,
    max_attempts: int | None,
    queue: str,
    backoff: QueueBackoff = DEFAULT_BACKOFF,
) -> JobOutcome:
    """One try of ``job``: send ``body`` and say what the queue should do next.

    ``attempt`` is the queue's 1-based try number (None: unknown), ``max_attempts`` how
    many tries the queue gives a job (None: the queue decides, as QStash does, so a
    retryable error is never the last). ``queue`` names the queue to the engine's logs and
    hooks. A ``RetryableError`` on try ``max_attempts`` (or later) is ``GiveUp(error,
    retryable=True)``: the queue then records the real reason.
    """
    try:
        result = await engine.send(job, body, attempt=attempt, queue=queue)
    except RetryableError as exc:
        if attempt is not None and max_attempts is not None and attempt >= max_attempts:
            return GiveUp(exc, retryable=True)
        return RetryIn(backoff.delay(exc, attempt or 1), exc)
    except FatalError as exc:
        return GiveUp(exc, retryable=False)
    return Succeeded(result_dict(result))


# -- knobs every adapter takes ------------------------------------------------------------


def check_tries(name: str, value: object) -> int:
    """``value`` if it is an integer >= 1 (a number of tries or retries), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_retry_base(value: object) -> QueueBackoff:
    """The backoff for an adapter's ``retry_base=`` (the first retry's delay), else ConfigError."""
    if not _seconds(value):
        raise ConfigError(f"retry_base must be a number of seconds in (0, 3600], got {value!r}")
    assert isinstance(value, int | float)
    return QueueBackoff(base=float(value))


def adapter_backoff(
    backoff: QueueBackoff | None = None, *, retry_base: float | None = None, retry_cap: float | None = None,
) -> QueueBackoff:
    """The ``QueueBackoff`` an adapter runs with, the same way in every adapter: its
    ``backoff=`` as given, or one from the shorthand ``retry_base=`` (the first retry's
    delay) and ``retry_cap=`` (the longest; Celery takes it), each defaulting to
    ``DEFAULT_BACKOFF``'s. ConfigError for a ``backoff`` that is not a ``QueueBackoff``, or
    for ``backoff`` together with a shorthand."""
    if backoff is not None:
        if not isinstance(backoff, QueueBackoff):
            raise ConfigError(f"backoff must be an idemsend.adapters.QueueBackoff, got {backoff!r}")
        if retry_base is not None or retry_cap is not None:
            raise ConfigError("pass backoff=QueueBackoff(base=..., cap=...) or retry_base=/retry_cap=, not both")
        return backoff
    if retry_base is None and retry_cap is None:
        return DEFAULT_BACKOFF
    base = DEFAULT_BACKOFF.base if retry_base is None else check_retry_base(retry_base).base
    return QueueBackoff(base=base, cap=DEFAULT_BACKOFF.cap if retry_cap is None else retry_cap)
