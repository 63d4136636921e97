"""The send engine: one pooled HTTP session, limits, single-flight, the retry loop."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import aiohttp

from ._body import canonical_body, fingerprint
from ._classify import Fatal, HTTPResponse, InFlight, Outcome, ResultClassifier, Retry, Sendoka, Sent
from ._errors import (
    MISMATCH,
    ConfigError,
    FatalError,
    IdemsendError,
    MismatchError,
    RetryableError,
    StaleReplayError,
    UnstableKeyError,
)
from ._keys import DEFAULT_MAX_KEY_LENGTH, Job, KeyDeriver, Template, validate_key
from ._limits import RateLimiter
from ._result import SendResult
from .ledger._base import (
    DEFAULT_LEASE,
    Claimed,
    Conflict,
    Done,
    Failed,
    Ledger,
    LedgerUnavailableError,
    Unstable,
)

__all__ = ["Engine"]

log = logging.getLogger("idemsend")

DAY = 24 * 3600.0


def _fatal_error(code: str, message: str, key: str) -> FatalError:
    if code == MISMATCH:
        return MismatchError(f"{message} (key {key!r})", key=key)
    return FatalError(f"{code}: {message} (key {key!r})", code=code, key=key)


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
            raise ConfigError(f"url must be an http(s) URL, got {url!r}")
        if isinstance(key, str):
            key = Template(key)
        elif not isinstance(key, KeyDeriver):
            raise ConfigError(f"key must be a template string or have derive(job) -> str, got {key!r}")
        if classifier is not None and not isinstance(classifier, ResultClassifier):
            raise ConfigError(f"classifier must have classify(response) -> Outcome, got {classifier!r}")
        if ledger is not None and not isinstance(ledger, Ledger):
            raise ConfigError(f"ledger must implement idemsend.ledger.Ledger, got {ledger!r}")
        for name, value in (("max_in_flight", max_in_flight), ("timeout", timeout), ("lease", lease)):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if retries < 0 or in_flight_budget < 0 or backoff < 0:
            raise ConfigError("retries, backoff and in_flight_budget must be >= 0")
        if stale_margin >= provider_window:
            raise ConfigError("stale_margin must be smaller than provider_window")
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
        self._base_headers = base
        # Header values that must never reach a log line, repr or error text.
        self._secrets = tuple(v for k, v in base.items() if k.lower() in {"authorization", "x-api-key"})
        self._limiter = RateLimiter(rate_limit) if rate_limit else None
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._flights: dict[str, tuple[str, asyncio.Future[SendResult]]] = {}
        # Claim tokens: random per engine, a counter per claim (unique, and cheap per send).
        self._token_prefix = secrets.token_hex(8) + "-"
        self._token_seq = itertools.count(1)
        # Leases this engine holds: key -> (token, last renewed, monotonic). One renewer task
        # per engine walks them, instead of a timer per send.
        self._leases: dict[str, tuple[str, float]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._session else "not started"
        return (
            f"<Engine {self.url} key={self.deriver!r} max_in_flight={self.max_in_flight}"
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
        return self

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
        return validate_key(self.deriver.derive(job), max_length=self.max_key_length)

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
            if flight[0] != fp:
                raise MismatchError(
                    f"key {key!r} is being sent right now with a different body", key=key
                )
            result = await asyncio.shield(flight[1])
            return replace(result, replayed=True)
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self._flights[key] = (fp, future)
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
            return await self._deliver(job, key, payload, fp, attempt)
        token = f"{self._token_prefix}{next(self._token_seq)}"
        waited = 0.0
        while True:
            claim = await self._ledger_call(key, ledger.claim(key, job.id, payload, fp, token, self.lease))
            if isinstance(claim, Claimed):
                break
            if isinstance(claim, Done):
                return self._from_record(job, key, fp, claim.response)
            if isinstance(claim, Failed):
                raise _fatal_error(claim.code, claim.message, key)
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
                    f"key {key!r} is being sent by another worker", retry_after=claim.retry_after, key=key,
                    reason="busy",
                )
            waited += delay
            await asyncio.sleep(delay)

        if not claim.fresh and time.time() - claim.first_sent_at > self.provider_window - self.stale_margin:
            first = claim.first_sent_at
            err = StaleReplayError(
                f"key {key!r} was first sent at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(first))}"
                " with an unknown outcome, and the provider has forgotten the key by now;"
                " resending could double-send, so it is not resent",
                key=key,
                first_sent_at=first,
            )
            await self._ledger_call(key, ledger.fail(key, token, err.code, err.message))
            raise err
        if claim.fingerprint != fp:
            log.warning(
                "idemsend: job %s body changed between attempts (first %s, now %s); resending the first body",
                job.id, claim.fingerprint[:16], fp[:16],
            )
            payload, fp = claim.payload, claim.fingerprint
        self._hold_lease(ledger, key, token)
        try:
            result = await self._deliver(job, key, payload, fp, attempt)
        except FatalError as exc:
            await self._settle(key, ledger.fail(key, token, exc.code, exc.message))
            raise
        except BaseException:
            # Unknown outcome: keep the record (frozen body, first-sent time), drop the lease.
            await self._settle(key, ledger.release(key, token))
            raise
        finally:
            self._leases.pop(key, None)
        record = {"id": result.id, "status": result.status, "response": result.response}
        if await self._settle(key, ledger.complete(key, token, record)) is False:
            log.warning("idemsend: key %s sent, but its ledger lease had passed to another worker", key)
        return result

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
                    *(self._settle(key, ledger.renew(key, token, self.lease)) for key, token in due)
                )

    async def _ledger_call(self, key: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except LedgerUnavailableError as exc:
            raise RetryableError(
                f"the ledger is unreachable, nothing was sent for key {key!r}: {exc}",
                retry_after=1.0,
                key=key,
                reason="ledger",
            ) from exc

    async def _settle(self, key: str, call: Awaitable[bool]) -> bool | None:
        """Record an outcome after the HTTP part; None when the ledger is unreachable.
        The send's own result stands even then: the lease runs out and the next attempt
        resumes it with the same key (the provider replays it)."""
        try:
            return await call
        except LedgerUnavailableError as exc:
            log.warning("idemsend: could not record key %s in the ledger: %s", key, exc)
            return None

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
        self, job: Job, key: str, payload: bytes, fp: str, attempt: int | None
    ) -> SendResult:
        """POST until the outcome is final, within the quick-retry and in-flight budgets."""
        tries = 0
        transient = 0
        waited = 0.0
        while True:
            tries += 1
            outcome, status, data = await self._post(key, payload)
            log.debug("idemsend: key=%s job=%s try=%s queue_attempt=%s -> %r", key, job.id, tries, attempt, outcome)
            if isinstance(outcome, Sent):
                return SendResult(
                    key=key, id=outcome.id, status=status, response=data, replayed=outcome.replayed,
                    attempts=tries, fingerprint=fp, job_id=job.id,
                )
            if isinstance(outcome, Fatal):
                raise _fatal_error(outcome.code, self._scrub(outcome.message), key)
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
            reason = self._scrub(outcome.reason)
            if outcome.after is not None and self._limiter is not None:
                self._limiter.pause(outcome.after)
            # Full-jitter exponential backoff, unless the provider named a delay.
            delay = (
                outcome.after
                if outcome.after is not None
                else random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (transient - 1)))
            )
            if transient > self.retries or delay > self.max_inline_delay:
                raise RetryableError(
                    f"key {key!r} not sent yet after {tries} tries ({reason}); retry later with the same job",
                    retry_after=outcome.after if outcome.after is not None else max(delay, self.backoff),
                    key=key, reason=reason,
                )
            await asyncio.sleep(delay)

    async def _post(self, key: str, payload: bytes) -> tuple[Outcome, int, Any]:
        session, sem = self._session, self._sem
        if session is None or sem is None:
            raise ConfigError("Engine was closed while a send was running")
        headers = {**self._base_headers, self._idem_header: key}
        async with sem:
            if self._limiter is not None:
                await self._limiter.acquire()
            try:
                async with session.post(self.url, data=payload, headers=headers) as resp:
                    raw = await resp.read()
                    status, resp_headers = resp.status, resp.headers
            except TimeoutError:
                # The request may have been processed: an unknown outcome. Same key again.
                return Retry(None, f"timeout after {self.timeout}s"), 0, None
            except aiohttp.ClientError as exc:
                return Retry(None, f"network error {type(exc).__name__}: {exc}"), 0, None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return self.classifier.classify(HTTPResponse(status, resp_headers, data)), status, data

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
                token = secret.removeprefix("Bearer ")
                if token:
                    text = text.replace(token, "[redacted]")
        return text
