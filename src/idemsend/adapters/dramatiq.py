"""Dramatiq adapter (``pip install 'idemsend[dramatiq]'``), on the RabbitMQ and Redis brokers.

```python
import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from idemsend import Engine
from idemsend.adapters.dramatiq import DramatiqAdapter

broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672")   # or RedisBroker(url=...)
dramatiq.set_broker(broker)
idem = DramatiqAdapter(broker, lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY))

@idem.actor(max_retries=9)          # dramatiq.actor(throws=(SendFailed,), max_retries=9, ...)
def send_welcome(user_id: str, email: str) -> None:
    idem.send({"user_id": user_id}, {"to": [email], "template": "welcome"})

send_welcome.send("u1", "ada@example.com")
```

Creating the adapter adds one middleware to the broker (:class:`IdemsendMiddleware`); nothing
of Dramatiq is patched. Actors are sync; the adapter runs the async engine on one event loop
per worker process (``ProcessLocalEngine``), shared by that process's worker threads and
started when the worker boots (a start that fails is logged and tried again by the first
message), closed when it shuts down.

**The job id is the message id** (``message.message_id``): Dramatiq keeps it when the Retries
middleware re-enqueues a message and when a broker redelivers one. A producer that enqueues
a job it may enqueue again gives it its own id: ``broker.enqueue(actor.message(...).copy(
message_id=job_id))``. The try number is ``message.options["retries"] + 1``.

The adapter kit's outcomes in Dramatiq's terms:

* ``Succeeded`` -> the actor returns ``result_dict`` (stored by the Results middleware if the
  actor has ``store_results=True``).
* ``RetryIn(delay)`` -> ``raise dramatiq.Retry(delay=ms)`` (:func:`retry_delay_ms`: the
  provider's ``Retry-After``, else the adapter's ``backoff``, rounded up to the millisecond).
  In Dramatiq's ``Retries.after_process_message`` a ``Retry`` with a ``delay`` is re-enqueued
  after exactly that delay: the Retries middleware's and the actor's ``min_backoff`` and
  ``max_backoff`` apply only to exceptions without one, so they never shorten or stretch the
  adapter's delays. ``max_retries`` (the message's option, else the actor's, else the Retries
  middleware's, 20 by default) is checked *before* the delay: the adapter reads the same
  value, so on the last try it gives up itself with the real reason instead of raising a
  ``Retry`` Dramatiq would drop as "Retries exceeded". ``max_retries=None`` retries forever.
* ``GiveUp`` (a ``FatalError``, or a ``RetryableError`` on the last try) -> raises
  :class:`SendFailed` chained to the real error. ``idem.actor`` puts ``SendFailed`` in the
  actor's ``throws``, so ``Retries`` calls ``message.fail()`` and never retries it; the
  broker dead-letters the message (RabbitMQ's ``.XQ`` queue, Redis's ``.XQ`` set).

Every try's outcome record (the adapter kit's ``outcome_record``: ``state`` ``sent``,
``retrying``, ``failed`` or ``fatal``, with the reason or code, ``detail``, ``message``,
``maybe_sent`` and ``attempt``) goes to ``on_outcome(message, record)`` when one is given,
before the actor returns or raises. If ``on_outcome`` raises, that error goes to Dramatiq
(the message is retried by ``Retries``; the next try replays the ledger's answer, no send).

**Refused or warned about at start.** A broker without the ``Retries`` middleware is refused
(``ConfigError`` when the adapter is made, and again at worker boot): without it a failed try
is acked and the job is lost. An actor without ``SendFailed`` in ``throws`` is refused at boot
and its messages are never sent (``Retries`` would retry a send the adapter gave up on). An
actor with ``retry_when`` (which overrides ``max_retries``, so the adapter cannot know the
last try) and a ``time_limit`` below ``engine.worst_case_send_time()`` (``TimeLimit``
interrupts the wait for a send that goes on running; the ledger stops a second one, but the
job is retried while it runs) are warned about.

**A message without a usable id** (not a string, empty, over ``MAX_JOB_ID_BYTES``, a NUL or a
lone surrogate) is failed before the actor runs: never sent, dead-lettered by the broker, its
reason logged (``idemsend.adapters.dramatiq``), told to ``on_outcome`` as ``fatal``
``INVALID_JOB_ID``, and stored as the message's exception by the Results middleware. So is a
message whose ``retries`` or ``max_retries`` option is not a whole number (``INVALID_MESSAGE``):
Dramatiq's Retries would fail on it after the try, swallow that error and ack the message.

**A worker killed mid-send.** The broker redelivers what the worker held: RabbitMQ when its
connection drops, the Redis broker once the dead worker's heartbeat is older than
``heartbeat_timeout`` (60 s by default; another worker's maintenance requeues it). The
ledger's claim stops a second send; the new try replays the first one's answer. A retry that
waits for its delay is held by a worker too (RabbitMQ's ``consumer_timeout``, 30 minutes by
default, must stay above the longest delay, at most ``MAX_RETRY_AFTER``, one hour).
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .._classify import MAX_RETRY_AFTER
from .._engine import Engine
from .._errors import ConfigError, IdemsendError, InvalidJobIdError, MissingExtraError
from .._keys import Job, validate_job_id
from ._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from ._kit import GiveUp, QueueBackoff, RetryIn, Succeeded, adapter_backoff, outcome_record, run_job
from ._portal import ProcessLocalEngine

try:
    import dramatiq
    from dramatiq.middleware import Middleware, MiddlewareError, Retries, SkipMessage
except ImportError as exc:
    raise MissingExtraError("dramatiq", "dramatiq") from exc

__all__ = [
    "QUEUE",
    "DramatiqAdapter",
    "DramatiqConfigError",
    "IdemsendMiddleware",
    "OnOutcome",
    "SendFailed",
    "actor_problems",
    "broker_problems",
    "job_id_problem",
    "max_attempts",
    "options_problem",
    "retry_delay_ms",
]

log = logging.getLogger("idemsend.adapters.dramatiq")

#: The queue name the engine's logs and hooks see.
QUEUE = "dramatiq"

#: Told every try's outcome record: ``on_outcome(message, record)``.
OnOutcome = Callable[[Any, Mapping[str, Any]], object]


class SendFailed(IdemsendError):
    """The actor gave up on its send: a fatal error, or the last try's retryable one.

    ``code`` is the fatal code (``IDEMPOTENCY_MISMATCH``, ``INVALID_JOB_ID``, …) or, when the
    tries ran out on a retryable error, its reason (``retryable`` is then True);
    ``maybe_sent`` is the real error's (True: a request for the key may have run). The real
    error is ``__cause__``. ``str()`` is ``"CODE: message"``, what Dramatiq's logs and the
    Results middleware's ``ResultFailure`` (``orig_exc_msg``) show.
    """

    def __init__(self, message: str, code: str = "FATAL", retryable: bool = False, maybe_sent: bool = False) -> None:
        super().__init__(message, maybe_sent=maybe_sent)
        self.args = (message, code, retryable, maybe_sent)
        self.code = code
        self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class DramatiqConfigError(ConfigError, MiddlewareError):
    """A ``ConfigError`` raised from the adapter's middleware at worker boot. Dramatiq logs
    and swallows any other error a middleware's ``before_*`` hook raises; this one stops the
    worker from starting (the ``dramatiq`` CLI's worker process exits, and the CLI with it)."""


# -- decisions (pure) -------------------------------------------------------------------------


def retry_delay_ms(delay: float) -> int:
    """``dramatiq.Retry(delay=)`` for a retry ``delay`` seconds from now: whole milliseconds,
    rounded up (never earlier than asked), within ``[0, MAX_RETRY_AFTER]``; a non-finite
    delay (a hostile ``Retry-After``) becomes ``MAX_RETRY_AFTER``."""
    if not math.isfinite(delay):
        delay = MAX_RETRY_AFTER
    return max(0, math.ceil(min(delay, MAX_RETRY_AFTER) * 1000))


def job_id_problem(message_id: object) -> InvalidJobIdError | None:
    """Why ``message_id`` cannot be a job id (every ledger must store it, and it must be the
    message's own string), or None when it can."""
    if not isinstance(message_id, str):
        return InvalidJobIdError(f"the Dramatiq message id must be a string, got {type(message_id).__name__}")
    try:
        validate_job_id(message_id)
    except InvalidJobIdError as error:
        return error
    return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def options_problem(options: Mapping[str, Any]) -> str | None:
    """Why a message's ``retries`` or ``max_retries`` option cannot be counted (a hostile or
    corrupt producer's message), or None. Dramatiq's Retries middleware would fail on such a
    message after the try (its error is logged and swallowed, and the message acked: the job
    lost), so the adapter dead-letters it before it runs."""
    retries = options.get("retries", 0)
    if not _whole(retries):
        return f"the message's retries option must be a whole number >= 0, got {retries!r:.40}"
    limit = options.get("max_retries")
    if limit is not None and not _whole(limit):
        return f"the message's max_retries option must be a whole number >= 0 or null, got {limit!r:.40}"
    return None


def retries_middleware(broker: Any) -> Retries | None:
    """The broker's ``Retries`` middleware, or None."""
    for middleware in getattr(broker, "middleware", ()):
        if isinstance(middleware, Retries):
            return middleware
    return None


def broker_problems(broker: Any) -> list[str]:
    """What in the broker's middleware breaks at-least-once delivery (empty when nothing)."""
    if retries_middleware(broker) is None:
        return [
            f"the Dramatiq broker {type(broker).__name__} has no Retries middleware: a try that raises "
            "(dramatiq.Retry included) is then acked and the job is lost. Keep dramatiq.middleware.Retries "
            "in the broker's middleware (it is in the default list); set max_retries=0 on an actor instead "
            "of removing it."
        ]
    return []


def actor_problems(actor: Any, *, worst_send: float | None = None) -> tuple[list[str], list[str]]:
    """``(refused, warnings)`` for one actor that sends through the adapter: ``throws``
    without :class:`SendFailed` is refused (Retries would retry a send given up on);
    ``retry_when`` and a ``time_limit`` (ms) below ``worst_send`` (seconds) are warnings."""
    name = getattr(actor, "actor_name", repr(actor))
    options = getattr(actor, "options", {}) or {}
    refused, warnings = [], []
    throws = options.get("throws")
    throws = throws if isinstance(throws, tuple) else (throws,) if throws is not None else ()
    if not any(isinstance(t, type) and issubclass(SendFailed, t) for t in throws):
        refused.append(
            f"actor {name} has throws={options.get('throws')!r}, without SendFailed: the Retries middleware "
            "would retry a send the adapter gave up on (a fatal error, or the last try). Declare it with "
            "idem.actor, or add idemsend.adapters.dramatiq.SendFailed to throws."
        )
    if options.get("retry_when") is not None:
        warnings.append(
            f"actor {name} has retry_when, which overrides max_retries: the adapter cannot tell the last try, "
            "so a job whose tries run out is failed by Dramatiq with a Retry, not the send's real reason."
        )
    if options.get("on_retry_exhausted"):
        warnings.append(
            f"actor {name} has on_retry_exhausted: Dramatiq calls it only when its own count runs out, and the "
            "adapter gives up on the last try itself (SendFailed, a throws exception), so it is not called for "
            "a send. Read the job's end from on_outcome, or use the Callbacks middleware's on_failure."
        )
    limit = options.get("time_limit")
    if worst_send is not None and isinstance(limit, int | float) and limit / 1000 < worst_send:
        warnings.append(
            f"actor {name} has time_limit={limit} ms, below engine.worst_case_send_time() = {worst_send:g} s: "
            "TimeLimit interrupts a send that goes on running, and the job is retried meanwhile (the ledger "
            f"stops a second send). Set time_limit to at least {math.ceil(worst_send * 1000)}."
        )
    return refused, warnings


def max_attempts(message: Any, actor: Any, retries: Retries | None) -> int | None:
    """The tries a message gets, as the Retries middleware counts them: ``max_retries`` from
    the message's options, else the actor's, else the middleware's, plus one. None when they
    are unlimited (``max_retries=None``) or ``retry_when`` decides instead."""
    actor_options = getattr(actor, "options", {}) or {}
    if actor_options.get("retry_when") is not None or (retries is not None and retries.retry_when is not None):
        return None
    default = retries.max_retries if retries is not None else 0
    limit = message.options.get("max_retries", actor_options.get("max_retries", default))
    if limit is None:
        return None
    return max(int(limit), 0) + 1


# -- the middleware -------------------------------------------------------------------------


class IdemsendMiddleware(Middleware):
    """The adapter's hooks in the broker: refuses a broker without Retries and actors that
    would retry a send given up on (worker boot), starts and closes the process's Engine,
    fails messages without a usable id before they run, and keeps the current message for
    :meth:`DramatiqAdapter.send`."""

    def __init__(self, adapter: DramatiqAdapter) -> None:
        self.adapter = adapter

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        """Refuse the broker's or an adapter actor's settings (``ConfigError``)."""
        refused = broker_problems(broker)
        for name in sorted(self.adapter.actor_names):
            refused += actor_problems(broker.get_actor(name))[0]
        if refused:
            raise DramatiqConfigError("; ".join(refused))

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        """Start this process's Engine in a short-lived thread, then check the actors'
        time limits against it."""
        threading.Thread(target=self.adapter.warm, name="idemsend-dramatiq-start", daemon=True).start()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """Close this process's Engine."""
        self.adapter.close()

    def before_process_message(self, broker: Any, message: Any) -> None:
        """Keep the message for ``send``; fail (dead-letter) one without a usable id, or whose
        try count cannot be read (``INVALID_MESSAGE``)."""
        problem = job_id_problem(message.message_id)
        if problem is None and (bad := options_problem(message.options)) is not None:
            problem = InvalidJobIdError(bad, code="INVALID_MESSAGE")
        if problem is not None:
            self.adapter.reject(message, problem)
            raise SkipMessage(str(problem))
        _CURRENT.set(message)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        """Forget the current message."""
        _CURRENT.set(None)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        """Forget the current message."""
        _CURRENT.set(None)


#: The message the current worker thread is processing.
_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("idemsend_dramatiq_message", default=None)


# -- the adapter ------------------------------------------------------------------------------


class DramatiqAdapter:
    """Runs ``Engine.send`` in Dramatiq actors, on one Engine per worker process.

    ``broker`` gets an :class:`IdemsendMiddleware`; ``engine_factory`` makes each process's
    Engine; ``backoff`` (a ``QueueBackoff``) is the delay between tries when the provider
    named none, or the shorthand ``retry_base=`` and ``retry_cap=``; ``on_outcome(message,
    record)`` is told every try's outcome record."""

    def __init__(
        self, broker: Any, engine_factory: EngineFactory, *, backoff: QueueBackoff | None = None,
        retry_base: float | None = None, retry_cap: float | None = None, on_outcome: OnOutcome | None = None,
    ) -> None:
        if not isinstance(broker, dramatiq.Broker):
            raise ConfigError(f"DramatiqAdapter needs the Dramatiq broker, got {broker!r}")
        problems = broker_problems(broker)
        if problems:
            raise ConfigError(problems[0])
        if on_outcome is not None and not callable(on_outcome):
            raise ConfigError(f"on_outcome must be a callable (message, record), got {on_outcome!r}")
        self.broker = broker
        self.engine_factory = check_factory(engine_factory)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base, retry_cap=retry_cap)
        self.on_outcome = on_outcome
        self.engines = ProcessLocalEngine(engine_factory)
        #: the actors made with :meth:`actor` (checked at worker boot)
        self.actor_names: set[str] = set()
        self._checked: set[str] = set()
        self._lock = threading.Lock()
        broker.add_middleware(IdemsendMiddleware(self))

    def __repr__(self) -> str:
        return f"<DramatiqAdapter broker={type(self.broker).__name__} {self.engines!r}>"

    def actor(self, fn: Callable[..., Any] | None = None, /, *, max_retries: int | None = DEFAULT_MAX_TRIES - 1,
              **options: Any) -> Any:
        """``dramatiq.actor`` on this broker with :class:`SendFailed` in ``throws`` and
        ``max_retries`` (9 by default: 10 tries). Other options pass through. Use as
        ``@idem.actor`` or ``@idem.actor(...)``."""
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                        or max_retries < 0):
            raise ConfigError(f"max_retries must be an integer >= 0 or None, got {max_retries!r}")
        throws = options.pop("throws", ())
        throws = throws if isinstance(throws, tuple) else (throws,)
        options["throws"] = (*throws, SendFailed)

        def decorate(function: Callable[..., Any]) -> Any:
            made: Any = dramatiq.actor(broker=self.broker, max_retries=max_retries, **options)(function)
            self.actor_names.add(made.actor_name)
            return made

        return decorate(fn) if fn is not None else decorate

    def send(self, data: Mapping[str, Any], body: Any) -> dict[str, Any]:
        """Send ``body`` for the message being processed; ``data`` fills the key template.
        Returns the result dict, or raises ``dramatiq.Retry`` or :class:`SendFailed`."""
        message = _CURRENT.get()
        if message is None:
            raise ConfigError("DramatiqAdapter.send must run inside a Dramatiq actor on the adapter's broker")
        actor = self.broker.get_actor(message.actor_name)
        self._check_actor(actor)
        attempt = int(message.options.get("retries", 0) or 0) + 1
        tries = max_attempts(message, actor, retries_middleware(self.broker))
        outcome = self.engines.call(lambda engine: run_job(
            engine, Job(message.message_id, data), body,
            attempt=attempt, max_attempts=tries, queue=QUEUE, backoff=self.backoff,
        ))
        self._tell(message, outcome_record(outcome, attempt=attempt))
        match outcome:
            case Succeeded(result):
                return result
            case RetryIn(delay, error):
                raise dramatiq.Retry(f"{error.reason}: {error}", delay=retry_delay_ms(delay)) from error
            case GiveUp(error, retryable=retryable):
                raise SendFailed(
                    str(error), code=outcome.code, retryable=retryable, maybe_sent=outcome.maybe_sent
                ) from error
        raise AssertionError(f"unexpected outcome {outcome!r}")  # pragma: no cover

    def engine(self) -> Engine:
        """This process's Engine, started (made on first use)."""
        return self.engines.engine()

    def close(self) -> None:
        """Close this process's Engine and stop its loop thread (worker shutdown does)."""
        self.engines.close()

    # -- the middleware's side ------------------------------------------------------------

    def warm(self) -> None:
        """Start this process's Engine and warn about the adapter actors' time limits."""
        try:
            self.engines.engine()
        except Exception:
            log.warning("idemsend: the Engine did not start with the Dramatiq worker; the first message tries "
                        "again", exc_info=True)
            return
        for name in sorted(self.actor_names):
            self._check_actor(self.broker.get_actor(name))

    def reject(self, message: Any, problem: InvalidJobIdError) -> None:
        """Fail ``message`` (the broker dead-letters it) for ``problem``, never sending it."""
        message.fail()
        message.stuff_exception(SendFailed(str(problem), code=problem.code))
        log.warning("idemsend: dramatiq message %.80r (actor %s) dead-lettered, never sent: %s",
                    message.message_id, message.actor_name, problem)
        self._tell(message, {
            "state": "fatal", "code": problem.code, "detail": problem.detail, "message": str(problem),
            "maybe_sent": False, "attempt": None,
        })

    def _tell(self, message: Any, record: Mapping[str, Any]) -> None:
        if self.on_outcome is not None:
            self.on_outcome(message, record)

    def _check_actor(self, actor: Any) -> None:
        name = actor.actor_name
        engine = self.engines.engine()
        refused, warnings = actor_problems(actor, worst_send=engine.worst_case_send_time())
        if refused:
            raise ConfigError("; ".join(refused))
        with self._lock:
            if name in self._checked:
                return
            self._checked.add(name)
        for warning in warnings:
            log.warning("idemsend: %s", warning)
