"""The engine: lifecycle, key derivation and single-flight, over the ledger guard and the
attempt loop.

Layers, one concern each (read top-down):

* ``Engine`` (here): configuration, start/close, ``send`` / ``send_many``: derive and check
  the key, serialise the body once, share one flight per key in this process, wrap each send
  in the hooks' scope.
* ``LedgerGuard`` (``_guard.py``): claim, stale rule, frozen body, leases, settling.
* ``Attempts`` (``_attempts.py``): the retry policy and the in-flight wait over the transport.
* ``Transport`` (``_transport.py``): one POST in, one answer out.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from ._attempts import Attempts
from ._body import fingerprint
from ._classify import ResultClassifier
from ._config import InFlightWait, Limits, Provider, RetryPolicy, check_number
from ._endpoint import Endpoint
from ._errors import (
    ConfigError,
    FatalError,
    IdemsendError,
    KeyDerivationError,
    RetryableError,
)
from ._flight import SingleFlight
from ._guard import LedgerGuard
from ._hooks import Hook, OutcomeInfo, SendInfo, SendObserver, send_scope
from ._keys import Job, KeyDeriver, Template, validate_key
from ._prepared import PreparedSend
from ._result import SendResult
from ._transport import AiohttpTransport, Transport
from .ledger._base import DEFAULT_LEASE, Ledger

__all__ = ["Engine"]


class _State(enum.Enum):
    NEW = "not started"
    OPEN = "open"
    CLOSED = "closed"


class Engine:
    """Sends one keyed POST per job, safely under at-least-once delivery.

    ``async with Engine(url, key="welcome:{user_id}:{job_id}", api_key=...) as engine:``
    then ``await engine.send(job, body)``; ``start()``/``aclose()`` do what ``async with``
    does, for hosts with startup and shutdown hooks (arq's ``on_startup``).

    ``send`` returns a ``SendResult`` or raises ``RetryableError`` (run the job again
    later; the same key makes that safe) or ``FatalError`` (never retry). It never loops
    forever: quick retries and the waits on a key in flight have budgets.

    Arguments (all keyword-only but ``url``):

    * ``url``: the provider endpoint to POST to (``http://`` or ``https://``).
    * ``key``: a template string (``"welcome:{user_id}:{job_id}"``: ``{job_id}`` is
      ``job.id``, other names come from ``job.data``) or any ``KeyDeriver``.
    * ``api_key``: sent as ``Authorization: Bearer …``; ``headers``: more request headers.
      Neither ever appears in a log line, error, repr or record.
    * ``provider``: a ``Provider`` (classifier, idempotency header, window, stale margin,
      key length) or just a ``ResultClassifier``; default ``Provider.sendoka()``.
    * ``retry``: a ``RetryPolicy``, or an int (the number of quick retries).
    * ``in_flight``: an ``InFlightWait``: how long to wait on a key the provider (or another
      worker) is processing.
    * ``limits``: ``Limits(max_in_flight=100, rate=None)``.
    * ``timeout``: seconds per HTTP request (10), for the default transport. A
      ``transport`` brings its own: its ``timeout`` attribute, where it has one, is the
      engine's ``timeout`` (``worst_case_send_time`` is sized from it), and a different
      explicit ``timeout=`` beside it is a ``ConfigError``.
    * ``ledger``: a ``Ledger`` (``MemoryLedger``, ``RedisLedger``) to record sends past the
      provider's window; ``lease``: seconds a claim holds a key while its send runs (30,
      renewed while it runs; the ledger guard holds it: without a ledger there is none).
    * ``hooks``: ``Hook`` objects told about every send (telemetry: ``idemsend.contrib.otel``).
    * ``transport``: a ``Transport`` to send with (tests: ``idemsend.testing.MockTransport``);
      default ``AiohttpTransport(timeout=timeout, max_connections=limits.max_in_flight)``.

    Each argument is kept as a read-only attribute of the same name (``endpoint`` holds the
    checked URL and headers): the parts that use them read them once, so a changed one
    would be reported but not used; make a new Engine instead.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | KeyDeriver,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        provider: Provider | ResultClassifier | None = None,
        retry: RetryPolicy | int | None = None,
        in_flight: InFlightWait | None = None,
        limits: Limits | None = None,
        timeout: float | None = None,
        ledger: Ledger | None = None,
        lease: float = DEFAULT_LEASE,
        hooks: Hook | Sequence[Hook] = (),
        transport: Transport | None = None,
    ) -> None:
        self.provider = _provider(provider)
        # The URL and header checks, the request headers and the redactor of their
        # credentials (which must never reach a log line, repr, error, result or record).
        self.endpoint = Endpoint.of(
            url, api_key=api_key, headers=headers, idempotency_header=self.provider.idempotency_header,
            secrets=self.provider.secrets,
        )
        if isinstance(key, str):
            key = Template(key)
        elif not isinstance(key, KeyDeriver):
            raise ConfigError(f"key must be a template string or have derive(job) -> str, got {key!r}")
        self.retry = _retry(retry)
        self.in_flight = in_flight if in_flight is not None else InFlightWait()
        self.limits = limits if limits is not None else Limits()
        if not isinstance(self.in_flight, InFlightWait):
            raise ConfigError(f"in_flight must be an idemsend.InFlightWait, got {self.in_flight!r}")
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"limits must be an idemsend.Limits, got {self.limits!r}")
        timeout = _request_timeout(timeout, transport)
        check_number("lease", lease, minimum=0.1)
        if ledger is not None and not isinstance(ledger, Ledger):
            raise ConfigError(f"ledger must implement idemsend.ledger.Ledger, got {ledger!r}")
        _check_ledger_fits(ledger, self.provider)
        hook_list = [hooks] if isinstance(hooks, Hook) else list(hooks)
        for hook in hook_list:
            if not isinstance(hook, Hook):
                raise ConfigError(f"hooks must have send_scope(info), got {hook!r}")
        if transport is not None and not isinstance(transport, Transport):
            raise ConfigError(f"transport must implement idemsend.Transport (start, post, aclose), got {transport!r}")
        self.url = url
        self.deriver: KeyDeriver = key
        self.timeout = timeout
        self.ledger = ledger
        redact = self.endpoint.redact
        self.transport: Transport = (
            transport if transport is not None
            else AiohttpTransport(timeout=timeout, max_connections=self.limits.max_in_flight)
        )
        self._attempts = Attempts(
            url=url, headers=self.endpoint.headers, idempotency_header=self.provider.key_header,
            signer=self.provider.signer, transport=self.transport,
            classifier=self.provider.classifier, retry=self.retry, in_flight=self.in_flight, limits=self.limits,
            redact=redact, timeout=timeout,
        )
        self._guard = (
            LedgerGuard(ledger, self._attempts, lease=lease, provider=self.provider, in_flight=self.in_flight,
                        redact=redact)
            if ledger is not None else None
        )
        # What runs a prepared send: the guard around the attempt loop, or the loop alone.
        self._deliver: Callable[[PreparedSend, SendObserver | None], Awaitable[SendResult]] = (
            self._guard.send if self._guard is not None else self._attempts.send
        )
        self._hooks: list[Hook] = hook_list
        self._state = _State.NEW
        # the sends under way in this engine, by key (what a concurrent send of one joins)
        self._flights = SingleFlight(drift_is_answered=ledger is not None)
        self._sealed = True

    def __setattr__(self, name: str, value: object) -> None:
        # The knobs are read once, into the parts that use them: assigning one afterwards
        # would change what the engine reports (worst_case_send_time) but not what it does.
        if name in _KNOBS and getattr(self, "_sealed", False):
            raise AttributeError(f"Engine.{name} is read-only once the engine is made: make a new Engine({name}=...)")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (
            f"<Engine {self.endpoint.safe_url} key={self.deriver!r} max_in_flight={self.limits.max_in_flight}"
            f" ledger={type(self.ledger).__name__ if self.ledger else None} {self._state.value}>"
        )

    @property
    def classifier(self) -> ResultClassifier:
        """The provider's classifier (``provider.classifier``)."""
        return self.provider.classifier

    def worst_case_send_time(self) -> float:
        """The longest one ``send`` can take, in seconds, before it returns or raises: the
        waits on another worker's lease and on the provider's IN_FLIGHT (one budget each),
        every HTTP try at the full ``timeout``, the retry sleeps and rate-limit waits. A queue
        that hides a message while it runs (SQS's visibility timeout) needs at least this; the
        ledger's own calls (its socket timeouts) come on top."""
        tries = self.retry.retries + 1 + self.in_flight.budgeted().max_tries()
        waits = self.in_flight.budget * (2 if self.ledger is not None else 1) + self.retry.worst_case_wait()
        rate_waits = tries * self.retry.max_inline_delay if self.limits.rate else 0.0
        return tries * self.timeout + waits + rate_waits

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the transport and check the ledger; idempotent. ``async with`` calls it."""
        if self._state is _State.CLOSED:
            raise ConfigError("this Engine was closed; make a new one")
        if self._state is _State.NEW:
            try:
                await self.transport.start()
                if self._guard is not None:
                    await self._guard.start()
            except BaseException:
                await self.aclose()
                raise
            self._state = _State.OPEN
        return self

    async def aclose(self) -> None:
        """Close the transport and the ledger. The engine cannot be started again."""
        self._state = _State.CLOSED
        await self.transport.aclose()
        if self._guard is not None:
            await self._guard.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- public API ------------------------------------------------------------------

    def derive_key(self, job: Job) -> str:
        """The validated key ``send`` would use for ``job`` (raises KeyDerivationError)."""
        try:
            key = self.deriver.derive(job)
        except IdemsendError:
            raise
        except Exception as exc:  # a custom deriver's bug is this job's fatal error, named
            raise KeyDerivationError(
                f"the key deriver {self.deriver!r} failed for job {job.id!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return validate_key(key, max_length=self.provider.max_key_length)

    async def send(self, job: Job, body: Any, *, attempt: int | None = None, queue: str | None = None) -> SendResult:
        """Send ``body`` for ``job`` with the job's key; at most one send per key.

        ``attempt`` is the queue's delivery count and ``queue`` the queue's name ("arq",
        ...), for logs and hooks only: neither reaches the key. Concurrent sends of the same
        key in this engine share one request (single-flight); the others get its result
        with ``replayed=True``.
        """
        if self._state is not _State.OPEN:
            raise ConfigError(
                "Engine is not started: use 'async with Engine(...)' or 'await engine.start()'"
                if self._state is _State.NEW else "Engine was closed"
            )
        key = self.derive_key(job)
        payload = self.provider.payload(body, key)  # the key goes in first when it travels in the body
        prepared = PreparedSend(job, key, payload, fingerprint(payload), attempt, queue)
        if not self._hooks:
            return await self._send(prepared, None)
        endpoint = self.endpoint
        info = SendInfo(key, job.id, attempt, queue, endpoint.host, endpoint.port, endpoint.safe_url)
        with send_scope(self._hooks, info) as observer:
            try:
                result = await self._send(prepared, observer)
            except IdemsendError as exc:
                observer.on_outcome(_outcome_of_error(exc))
                raise
            observer.on_outcome(_outcome_of(result))
            return result

    async def send_many(
        self, pairs: Iterable[tuple[Job, Any]]
    ) -> list[SendResult | IdemsendError]:
        """One keyed request per message (batch endpoints take no keys), under the
        engine's limits. Returns a result or the ``IdemsendError`` for each pair, in order."""
        items = list(pairs)

        async def one(job: Job, body: Any) -> SendResult | IdemsendError:
            try:
                return await self.send(job, body)
            except IdemsendError as exc:
                return exc

        return list(await asyncio.gather(*(one(job, body) for job, body in items)))

    # -- single-flight ---------------------------------------------------------------

    async def _send(self, send: PreparedSend, observer: SendObserver | None) -> SendResult:
        return await self._flights.run(send, lambda: self._deliver(send, observer))


#: The engine's public settings, fixed at construction (see ``Engine.__setattr__``).
_KNOBS = frozenset({
    "url", "endpoint", "deriver", "provider", "retry", "in_flight", "limits", "timeout", "ledger", "transport",
})


DEFAULT_TIMEOUT = 10.0


def _request_timeout(timeout: float | None, transport: object) -> float:
    """The seconds one HTTP request can take: the transport's own ``timeout`` when it has
    one (an explicit, different ``timeout=`` beside it is refused, since only one of them
    can be in force), else ``timeout`` (default 10 s)."""
    if timeout is not None:
        check_number("timeout", timeout, minimum=0, exclusive=True)
    own = getattr(transport, "timeout", None) if transport is not None else None
    if own is None:
        return DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if isinstance(own, bool) or not isinstance(own, int | float) or not 0 < own < float("inf"):
        raise ConfigError(f"transport.timeout must be a positive number of seconds, got {own!r}")
    if timeout is not None and float(timeout) != float(own):
        raise ConfigError(
            f"timeout={timeout:g} is the default transport's; the transport given has its own timeout"
            f" ({own:g}s), which is the one in force: set it there and drop timeout="
        )
    return float(own)


def _check_ledger_fits(ledger: Ledger | None, provider: Provider) -> None:
    """Refuse a ledger that cannot keep what ``provider``'s sends need: records for the
    provider's whole window, keys as long as the provider allows."""
    retention = ledger.retention if ledger is not None else None
    if isinstance(retention, int | float) and retention < provider.window:
        raise ConfigError(
            f"the ledger keeps records {retention:g}s, less than the provider window ({provider.window:g}s):"
            " a replay after the ledger forgot but inside the window could resend a drifted body, and the"
            " ledger would protect nothing past the window; keep records at least as long as the window"
        )
    stored = getattr(ledger, "max_key_length", None)
    if isinstance(stored, int) and provider.max_key_length > stored:
        raise ConfigError(
            f"the provider allows keys of {provider.max_key_length} characters, but"
            f" {type(ledger).__name__} stores keys of at most {stored}: set"
            f" Provider(max_key_length={stored}) or less"
        )


def _provider(value: Provider | ResultClassifier | None) -> Provider:
    if value is None:
        return Provider()
    if isinstance(value, Provider):
        return value
    if isinstance(value, ResultClassifier):
        return Provider(classifier=value)
    raise ConfigError(f"provider must be an idemsend.Provider or a classifier, got {value!r}")


def _retry(value: RetryPolicy | int | None) -> RetryPolicy:
    if value is None:
        return RetryPolicy()
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return RetryPolicy(retries=value)
    raise ConfigError(f"retry must be an idemsend.RetryPolicy or a number of retries, got {value!r}")


def _outcome_of(result: SendResult) -> OutcomeInfo:
    if result.from_ledger:
        return OutcomeInfo("from_ledger", result.attempts, status=result.status, result=result)
    if result.replayed:
        code = "UNEXPECTED_REPLAY" if result.unexpected_replay else None
        return OutcomeInfo("replayed", result.attempts, status=result.status, code=code, result=result)
    return OutcomeInfo("sent", result.attempts, status=result.status, result=result)


def _outcome_of_error(exc: IdemsendError) -> OutcomeInfo:
    tries = len(exc.tries)
    if isinstance(exc, FatalError):
        return OutcomeInfo("fatal", tries, code=exc.code, error=exc)
    if isinstance(exc, RetryableError):
        return OutcomeInfo("retryable", tries, code=exc.reason, error=exc)
    return OutcomeInfo("fatal", tries, code=type(exc).__name__, error=exc)

