"""The send engine: one pooled HTTP session, limits, single-flight, the retry loop."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import aiohttp
from yarl import URL

from ._body import canonical_body, fingerprint
from ._classify import (
    MAX_RETRY_AFTER,
    Fatal,
    HTTPResponse,
    InFlight,
    Outcome,
    ResultClassifier,
    Retry,
    Sendoka,
    Sent,
)
from ._errors import (
    MISMATCH,
    ConfigError,
    FatalError,
    IdemsendError,
    KeyDerivationError,
    MismatchError,
    RetryableError,
    SetupError,
    StaleReplayError,
    UnstableKeyError,
)
from ._keys import DEFAULT_MAX_KEY_LENGTH, Job, KeyDeriver, Template, validate_key
from ._limits import RateLimiter
from ._redact import Redactor, safe_url
from ._result import SendResult
from .ledger._base import (
    DEFAULT_LEASE,
    Claimed,
    Conflict,
    Done,
    Failed,
    Ledger,
    LedgerUnavailableError,
    SettleResult,
    Unstable,
)

__all__ = ["Engine"]

log = logging.getLogger("idemsend")

DAY = 24 * 3600.0
#: The longest any timing knob may be: longer values are mistakes, and would hang a worker.
MAX_DURATION = 30 * DAY


def _fatal_error(code: str, detail: str, key: str, *, setup: bool = False, recorded: bool = False) -> FatalError:
    """The error for a fatal outcome; ``detail`` is the bare reason (what the ledger keeps)."""
    where = " (recorded in the ledger)" if recorded else ""
    if code == MISMATCH:
        return MismatchError(f"{detail} (key {key!r}){where}", key=key, detail=detail)
    cls = SetupError if setup else FatalError
    return cls(f"{code}: {detail} (key {key!r}){where}", code=code, key=key, detail=detail)


def _check_number(
    name: str, value: object, *, minimum: float, exclusive: bool = False, integer: bool = False,
    maximum: float = MAX_DURATION,
) -> None:
    """Refuse a timing or size knob that is not a finite number in its range."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        raise ConfigError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value!r}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g}, got {value!r}")


def _finite_delay(value: float | None) -> float | None:
    """A provider's (or a custom classifier's) delay, made finite and bounded."""
    if value is None or math.isnan(value):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


class _Tries:
    """What one attempt's HTTP tries did: how many, and whether any may have reached the
    provider and been executed (anything but a refused connection, a 429, an IN_FLIGHT
    409 or a setup error). A fresh claim whose tries provably executed nothing is
    forgotten on release, so its first-sent time does not start the stale clock."""

    __slots__ = ("count", "maybe_sent")

    def __init__(self) -> None:
        self.count = 0
        self.maybe_sent = False


class Engine:
    """Sends one keyed POST per job, safely under at-least-once delivery.

    ``async with Engine(url, key="welcome:{user_id}:{job_id}", api_key=...) as engine:``
    then ``await engine.send(job, body)``. The engine owns one pooled
    ``aiohttp.ClientSession``; ``start()``/``aclose()`` do what ``async with`` does, for
    hosts with startup and shutdown hooks (arq's ``on_startup``).

    ``send`` returns a ``SendResult`` or raises ``RetryableError`` (run the job again
    later; the same key makes that safe) or ``FatalError`` (never retry). It never
    loops forever: quick retries and the wait on a key in flight both have budgets.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | KeyDeriver,
        api_key: str | None = None,
        classifier: ResultClassifier | None = None,
        ledger: Ledger | None = None,
        max_in_flight: int = 100,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        max_inline_delay: float = 5.0,
        in_flight_delay: float = 0.5,
        in_flight_budget: float = 10.0,
        rate_limit: float | None = None,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        provider_window: float = DAY,
        stale_margin: float = 3600.0,
        lease: float = DEFAULT_LEASE,
        idempotency_header: str = "Idempotency-Key",
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must be an http(s) URL, got {safe_url(url) if isinstance(url, str) else url!r}")
        try:
            parsed_url = URL(url)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"url is not a valid URL: {safe_url(url)}") from exc
        if not parsed_url.host:
            raise ConfigError(f"url has no host: {safe_url(url)}")
        if isinstance(key, str):
            key = Template(key)
        elif not isinstance(key, KeyDeriver):
            raise ConfigError(f"key must be a template string or have derive(job) -> str, got {key!r}")
        if classifier is not None and not isinstance(classifier, ResultClassifier):
            raise ConfigError(f"classifier must have classify(response) -> Outcome, got {classifier!r}")
        if ledger is not None and not isinstance(ledger, Ledger):
            raise ConfigError(f"ledger must implement idemsend.ledger.Ledger, got {ledger!r}")
        _check_number("max_in_flight", max_in_flight, minimum=1, integer=True, maximum=100_000)
        _check_number("retries", retries, minimum=0, integer=True, maximum=100)
        _check_number("max_key_length", max_key_length, minimum=1, integer=True, maximum=65_536)
        _check_number("timeout", timeout, minimum=0, exclusive=True)
        _check_number("backoff", backoff, minimum=0)
        _check_number("max_backoff", max_backoff, minimum=backoff)
        _check_number("max_inline_delay", max_inline_delay, minimum=0)
        # a zero delay would turn a key held IN_FLIGHT into a busy loop of POSTs
        _check_number("in_flight_delay", in_flight_delay, minimum=0.01)
        _check_number("in_flight_budget", in_flight_budget, minimum=0)
        _check_number("lease", lease, minimum=0.1)
        _check_number("provider_window", provider_window, minimum=0, exclusive=True, maximum=365 * DAY)
        _check_number("stale_margin", stale_margin, minimum=0)
        if rate_limit is not None:
            _check_number("rate_limit", rate_limit, minimum=0, exclusive=True, maximum=1e9)
        if stale_margin >= provider_window:
            raise ConfigError(
                f"stale_margin ({stale_margin:g}s) must be smaller than provider_window ({provider_window:g}s)"
            )
        if not isinstance(idempotency_header, str) or not idempotency_header.strip():
            raise ConfigError(f"idempotency_header must be a header name, got {idempotency_header!r}")
        for name, value in (headers or {}).items():
            if not isinstance(name, str) or not isinstance(value, str) or "\n" in value or "\r" in value:
                raise ConfigError(f"headers must map names to single-line strings; bad header {name!r}")
        self.url = url
        self.deriver: KeyDeriver = key
        self.classifier: ResultClassifier = classifier if classifier is not None else Sendoka()
        self.ledger = ledger
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_inline_delay = max_inline_delay
        self.in_flight_delay = in_flight_delay
        self.in_flight_budget = in_flight_budget
        self.max_key_length = max_key_length
        self.provider_window = provider_window
        self.stale_margin = stale_margin
        self.lease = lease
        self._idem_header = idempotency_header
        base = {"Content-Type": "application/json", **(headers or {})}
        if api_key is not None:
            base["Authorization"] = f"Bearer {api_key}"
        if parsed_url.user is not None and any(name.lower() == "authorization" for name in base):
            raise ConfigError(
                "url carries credentials (user:password@) and an Authorization header is set too"
                " (api_key= or headers=): use one of them"
            )
        self._base_headers = base
        # Credentials (the API key, any header named like one, the URL's password and query
        # values) must never reach a log line, repr, error, result or ledger record.
        self._redact = Redactor.for_request(url, base, idempotency_header=idempotency_header)
        self._safe_url = safe_url(url)
        self._limiter = RateLimiter(rate_limit) if rate_limit else None
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        # key -> (fingerprint, job id, the future its joiners wait on)
        self._flights: dict[str, tuple[str, str, asyncio.Future[SendResult]]] = {}
        # Claim tokens: random per engine, a counter per claim (unique, and cheap per send).
        self._token_prefix = secrets.token_hex(8) + "-"
        self._token_seq = itertools.count(1)
        # Leases this engine holds: key -> (token, last renewed, monotonic). One renewer task
        # per engine walks them, instead of a timer per send.
        self._leases: dict[str, tuple[str, float]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._ledger_started = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._session else "not started"
        return (
            f"<Engine {self._safe_url} key={self.deriver!r} max_in_flight={self.max_in_flight}"
            f" ledger={type(self.ledger).__name__ if self.ledger else None} {state}>"
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> Self:
        if self._closed:
            raise ConfigError("this Engine was closed; make a new one")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_in_flight, limit_per_host=self.max_in_flight)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
            self._sem = asyncio.Semaphore(self.max_in_flight)
            if self.ledger is not None:
                try:
                    await self._start_ledger()
                except LedgerUnavailableError as exc:
                    # A worker that boots during a ledger outage still boots: its sends fail
                    # closed (RetryableError, nothing sent) until the check passes.
                    log.warning("idemsend: the ledger could not be checked at start (%s); checked again"
                                " before the first send", self._redact.text(str(exc)))
                except BaseException:
                    await self.aclose()
                    raise
        return self

    async def _start_ledger(self) -> None:
        """Run the ledger's own start check (a RedisLedger refuses a Redis that evicts)."""
        assert self.ledger is not None
        await self.ledger.start()
        self._ledger_started = True

    async def aclose(self) -> None:
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self.ledger is not None:
            await self.ledger.aclose()

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
        return validate_key(key, max_length=self.max_key_length)

    async def send(self, job: Job, body: Any, *, attempt: int | None = None) -> SendResult:
        """Send ``body`` for ``job`` with the job's key; at most one send per key.

        ``attempt`` is the queue's delivery count, used in log lines only: it never
        reaches the key. Concurrent sends of the same key in this engine share one
        request (single-flight); the others get its result with ``replayed=True``.
        """
        if self._session is None:
            raise ConfigError("Engine is not started: use 'async with Engine(...)' or 'await engine.start()'")
        key = self.derive_key(job)
        payload = canonical_body(body)
        fp = fingerprint(payload)
        flight = self._flights.get(key)
        if flight is not None:
            flight_fp, flight_job, flight_future = flight
            if flight_fp != fp:
                # Answer as a moment later would: with a ledger, the same job gets the
                # frozen first body's result (drift is logged); otherwise the provider
                # would answer IDEMPOTENCY_MISMATCH.
                if self.ledger is None or flight_job != job.id:
                    raise MismatchError(
                        f"key {key!r} is being sent right now with a different body"
                        f" (sending {flight_fp[:12]}, this {fp[:12]})",
                        key=key,
                    )
                self._log_drift(job.id, flight_fp, fp)
            result = await asyncio.shield(flight_future)
            return replace(result, replayed=True, job_id=job.id)
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self._flights[key] = (fp, job.id, future)
        try:
            result = await self._send_claimed(job, key, payload, fp, attempt)
        except IdemsendError as exc:
            future.set_exception(exc)
            raise
        except BaseException as exc:
            future.set_exception(RetryableError(f"the send of key {key!r} was interrupted: {exc!r}", key=key))
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._flights[key]
            if future.done() and not future.cancelled():
                future.exception()  # mark retrieved: joiners are optional

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

    # -- ledger ----------------------------------------------------------------------

    async def _send_claimed(
        self, job: Job, key: str, payload: bytes, fp: str, attempt: int | None
    ) -> SendResult:
        ledger = self.ledger
        if ledger is None:
            return await self._deliver(job, key, payload, fp, attempt, _Tries())
        if not self._ledger_started:
            try:
                await self._ledger_call(key, self._start_ledger())
            except ConfigError as exc:
                raise SetupError(f"LEDGER_CONFIG: {exc} (key {key!r})", code="LEDGER_CONFIG", key=key,
                                 detail=str(exc)) from exc
        token = f"{self._token_prefix}{next(self._token_seq)}"
        waited = 0.0
        while True:
            claim = await self._ledger_call(key, ledger.claim(key, job.id, payload, fp, token, self.lease))
            if isinstance(claim, Claimed):
                break
            if isinstance(claim, Done):
                if claim.fingerprint and claim.fingerprint != fp:
                    self._log_drift(job.id, claim.fingerprint, fp)
                return self._from_record(job, key, claim.fingerprint or fp, claim.response)
            if isinstance(claim, Failed):
                raise _fatal_error(claim.code, claim.message, key, recorded=True)
            if isinstance(claim, Unstable):
                raise UnstableKeyError(
                    f"job {job.id!r} derived key {key!r} but its earlier attempt used {claim.recorded_key!r};"
                    " the key template must not change between retries (no timestamps or attempt numbers)",
                    key=key,
                    recorded_key=claim.recorded_key,
                )
            if isinstance(claim, Conflict):
                raise MismatchError(
                    f"key {key!r} is recorded for another job with a different body"
                    f" (recorded {claim.recorded_fingerprint[:12]}, this {fp[:12]})",
                    key=key,
                )
            # Busy: another worker holds the lease. Wait like an IN_FLIGHT, within budget.
            delay = min(max(claim.retry_after, 0.05), self.in_flight_delay) * random.uniform(0.5, 1.5)
            if waited + delay > self.in_flight_budget:
                raise RetryableError(
                    f"key {key!r} is being sent by another worker",
                    retry_after=_finite_delay(claim.retry_after), key=key, reason="busy",
                )
            waited += delay
            await asyncio.sleep(delay)

        # The age is measured on the ledger's clock, not this worker's: a worker whose
        # clock runs hours behind must not resend after the provider forgot the key.
        if not claim.fresh and claim.age > self.provider_window - self.stale_margin:
            first = claim.first_sent_at
            detail = (
                f"first sent at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(first))}"
                f" ({claim.age / 3600:.1f} h ago) with an unknown outcome, and the provider has forgotten"
                " the key by now; resending could double-send, so it is not resent"
            )
            err = StaleReplayError(f"STALE_REPLAY: {detail} (key {key!r})", key=key, first_sent_at=first)
            err.detail = detail
            await self._ledger_call(key, ledger.fail(key, token, err.code, detail))
            raise err
        if claim.fingerprint != fp:
            self._log_drift(job.id, claim.fingerprint, fp)
            payload, fp = claim.payload, claim.fingerprint
        self._hold_lease(ledger, key, token)
        tries = _Tries()
        try:
            result = await self._deliver(job, key, payload, fp, attempt, tries)
        except SetupError:
            # The engine's setup is wrong, not the job: nothing is recorded against the key.
            # A fresh claim whose tries executed nothing is forgotten outright.
            await self._settle(key, "release", ledger.release(key, token, forget=claim.fresh and not tries.maybe_sent))
            raise
        except FatalError as exc:
            await self._settle(key, "fail", ledger.fail(key, token, exc.code, exc.detail))
            raise
        except BaseException:
            # Unknown outcome: keep the record (frozen body, first-sent time), drop the lease,
            # unless this was the first claim and no try can have reached the provider.
            await self._settle(key, "release", ledger.release(key, token, forget=claim.fresh and not tries.maybe_sent))
            raise
        finally:
            self._leases.pop(key, None)
        record = {"id": result.id, "status": result.status, "response": result.response}
        await self._settle(key, "complete", ledger.complete(key, token, record))
        return result

    def _log_drift(self, job_id: str, first: str, now: str) -> None:
        log.warning(
            "idemsend: job %s body changed between attempts (first %s, now %s); the first body stands",
            job_id, first[:16], now[:16],
        )

    def _hold_lease(self, ledger: Ledger, key: str, token: str) -> None:
        self._leases[key] = (token, time.monotonic())
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_leases(ledger))

    async def _renew_leases(self, ledger: Ledger) -> None:
        """Renew every lease held longer than a third of its length, checked six times a
        lease; most sends finish long before, and then renewal costs nothing."""
        third = self.lease / 3
        while self._leases:
            await asyncio.sleep(self.lease / 6)
            now = time.monotonic()
            due = [(key, token) for key, (token, since) in self._leases.items() if now - since >= third]
            for key, token in due:
                self._leases[key] = (token, now)
            if due:
                await asyncio.gather(
                    *(self._settle(key, "renew", ledger.renew(key, token, self.lease)) for key, token in due)
                )

    async def _ledger_call(self, key: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except LedgerUnavailableError as exc:
            # No retry_after: the queue's own backoff spreads the retries over the outage.
            raise RetryableError(
                f"the ledger is unreachable, nothing was sent for key {key!r}: {self._redact.text(str(exc))}",
                key=key,
                reason="ledger",
            ) from exc

    async def _settle(self, key: str, op: str, call: Awaitable[SettleResult]) -> SettleResult | None:
        """Record an outcome after the HTTP part; None when the ledger is unreachable.
        The send's own result stands even then: the lease runs out and the next attempt
        resumes it with the same key (the provider replays it)."""
        try:
            result = await call
        except LedgerUnavailableError as exc:
            log.warning("idemsend: could not %s key %s in the ledger: %s", op, key, self._redact.text(str(exc)))
            return None
        if result == "recreated":
            log.warning(
                "idemsend: key %s was sent, but its ledger record had vanished (the store restarted without"
                " persistence, or evicted it); the completed send is recorded again",
                key,
            )
        elif result == "missing":
            log.warning(
                "idemsend: could not %s key %s: its ledger record had vanished (the store restarted without"
                " persistence, or evicted it)",
                op, key,
            )
        elif result == "superseded":
            log.warning(
                "idemsend: could not %s key %s: this worker's lease had run out and another worker claimed"
                " the key (the provider answers that worker with a replay)",
                op, key,
            )
        return result

    def _from_record(self, job: Job, key: str, fp: str, record: Mapping[str, Any]) -> SendResult:
        return SendResult(
            key=key,
            id=record.get("id"),
            status=int(record.get("status", 200)),
            response=record.get("response"),
            replayed=True,
            attempts=0,
            fingerprint=fp,
            job_id=job.id,
            from_ledger=True,
        )

    # -- HTTP ------------------------------------------------------------------------

    async def _deliver(
        self, job: Job, key: str, payload: bytes, fp: str, attempt: int | None, tries: _Tries
    ) -> SendResult:
        """POST until the outcome is final, within the quick-retry and in-flight budgets."""
        transient = 0
        waited = 0.0
        while True:
            tries.count += 1
            outcome, status, data = await self._post(key, payload, tries)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "idemsend: key=%s job=%s try=%s queue_attempt=%s -> %s", key, job.id, tries.count, attempt,
                    self._redact.text(repr(outcome)),
                )
            if isinstance(outcome, Sent):
                return SendResult(
                    key=key, id=outcome.id, status=status, response=data, replayed=outcome.replayed,
                    attempts=tries.count, fingerprint=fp, job_id=job.id,
                )
            if isinstance(outcome, Fatal):
                setup = outcome.scope == "engine"
                raise _fatal_error(outcome.code, self._redact.text(outcome.message), key, setup=setup)
            if isinstance(outcome, InFlight):
                delay = self.in_flight_delay * random.uniform(0.5, 1.5)
                if waited + delay > self.in_flight_budget:
                    raise RetryableError(
                        f"key {key!r} stayed in flight at the provider for {waited:.1f}s",
                        retry_after=self.in_flight_delay, key=key, reason="in_flight",
                    )
                waited += delay
                await asyncio.sleep(delay)
                continue
            transient += 1
            reason = self._redact.text(outcome.reason)
            after = _finite_delay(outcome.after)
            if after is not None and self._limiter is not None:
                self._limiter.pause(after)
            # Full-jitter exponential backoff, unless the provider named a delay.
            delay = (
                after
                if after is not None
                else random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (transient - 1)))
            )
            if transient > self.retries or delay > self.max_inline_delay:
                # retry_after is the provider's ask only; without one, the queue's own
                # backoff decides, so retries spread over an outage instead of bunching.
                raise RetryableError(
                    f"key {key!r} not sent yet after {tries.count} tries ({reason}); retry later with the same job",
                    retry_after=after, key=key, reason=reason,
                )
            await asyncio.sleep(delay)

    async def _post(self, key: str, payload: bytes, tries: _Tries) -> tuple[Outcome, int, Any]:
        session, sem = self._session, self._sem
        if session is None or sem is None:
            raise ConfigError("Engine was closed while a send was running")
        headers = {**self._base_headers, self._idem_header: key}
        async with sem:
            if self._limiter is not None:
                wait = await self._limiter.acquire(self.max_inline_delay)
                if wait:
                    # The rate limit (or a 429's pause) holds every slot longer than a job may
                    # wait inline: back to the queue, nothing sent.
                    return Retry(wait, f"rate limit: the next slot is {wait:.1f}s away"), 0, None
            # Counted as possibly executed from the moment the request may leave, so a
            # cancellation mid-request is never mistaken for "nothing was sent".
            earlier, tries.maybe_sent = tries.maybe_sent, True
            try:
                # Never follow a redirect: aiohttp would turn the POST into a GET without the
                # body, and a 200 from the new location would read as a send that never was.
                async with session.post(self.url, data=payload, headers=headers, allow_redirects=False) as resp:
                    raw = await resp.read()
                    status, resp_headers = resp.status, resp.headers
            except aiohttp.ClientConnectorError as exc:
                tries.maybe_sent = earlier  # no connection was made: nothing reached the provider
                return Retry(None, f"cannot connect: {type(exc).__name__}: {exc}"), 0, None
            except TimeoutError:
                # The request may have been processed: an unknown outcome. Same key again.
                return Retry(None, f"timeout after {self.timeout}s"), 0, None
            except aiohttp.ClientError as exc:
                return Retry(None, f"network error {type(exc).__name__}: {exc}"), 0, None
        if self._redact:
            raw = self._redact.body(raw)
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            data = None
        outcome = self.classifier.classify(HTTPResponse(status, resp_headers, data))
        if (
            isinstance(outcome, InFlight)
            or (isinstance(outcome, Fatal) and outcome.scope == "engine")
            or (isinstance(outcome, Retry) and status == 429)
        ):
            tries.maybe_sent = earlier  # the provider says it did not run this request
        return outcome, status, data
