"""The attempt loop: POST until the answer is final, within the retry policy and the
in-flight budget, over a transport.

One send's HTTP part: take a slot (``Limits.max_in_flight``, the rate limit), POST the same
bytes with the same key, classify the answer, and then return (sent), raise (fatal, or
retryable once the quick retries or the in-flight budget are spent), or wait and try again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from json.scanner import make_scanner
from typing import Any

from ._classify import MAX_RETRY_AFTER, Fatal, HTTPResponse, InFlight, Outcome, ResultClassifier, Retry, Sent
from ._config import InFlightWait, Limits, RetryPolicy
from ._errors import MISMATCH, RetryableError, fatal_error
from ._hooks import SendObserver, TryInfo, WaitInfo
from ._keys import Job
from ._limits import RateLimiter
from ._log import fields
from ._redact import Redactor
from ._result import SendResult
from ._transport import Transport, TransportError, TransportRequest

__all__ = ["Attempts", "Tries", "finite_delay"]

log = logging.getLogger("idemsend.engine")


def finite_delay(value: float | None) -> float | None:
    """A provider's (or a custom classifier's) delay, made finite and bounded."""
    if value is None or math.isnan(value):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


class Tries:
    """What one attempt's HTTP tries did: how many, whether any may have reached the
    provider and run (anything but a refused connection, a 429 or a 4xx refusal), and
    how many bytes the last answer's body had (what a done record may keep of it). A fresh
    claim whose tries provably ran nothing is forgotten on release, so its first-sent time
    does not start the stale clock.

    ``earlier`` is what the engine knows of the job's earlier deliveries: True when one
    may have run (a ledger record left in flight; without a ledger, any queue attempt
    after the first). ``may_have_run`` joins both: what every error raised says."""

    __slots__ = ("body_size", "count", "earlier", "maybe_sent")

    def __init__(self, *, earlier: bool = False) -> None:
        self.count = 0
        self.maybe_sent = False
        self.earlier = earlier
        self.body_size = 0

    @property
    def may_have_run(self) -> bool:
        """Whether a request for the key may have run: in these tries or an earlier delivery."""
        return self.maybe_sent or self.earlier


def _not_run(outcome: Outcome, status: int) -> bool:
    """The provider says it did not run this request: a 429, a setup error (401, 403, 407,
    404, 405) or a 4xx refusal of the job (a validation error). Not a 3xx (a 303 See Other
    is how some APIs answer a POST they ran), not a mismatch (the key ran with another
    body), and not an IN_FLIGHT 409: that proves the key is live at the provider, so the
    record that may be all that stands between a later replay and a double send must stay."""
    if isinstance(outcome, Retry):
        return status == 429
    if not isinstance(outcome, Fatal) or 300 <= status < 400:
        return False
    return outcome.scope == "engine" or (400 <= status < 500 and outcome.code != MISMATCH)


class Attempts:
    """The HTTP part of a send (see the module docstring)."""

    def __init__(
        self,
        *,
        url: str,
        headers: Mapping[str, str],
        idempotency_header: str,
        transport: Transport,
        classifier: ResultClassifier,
        retry: RetryPolicy,
        in_flight: InFlightWait,
        limits: Limits,
        redact: Redactor,
    ) -> None:
        self.url = url
        self.transport = transport
        self.classifier = classifier
        self.retry = retry
        self.in_flight = in_flight
        self._headers = dict(headers)
        self._idem_header = idempotency_header
        self._redact = redact
        self._sem = asyncio.Semaphore(limits.max_in_flight)
        self._limiter = RateLimiter(limits.rate) if limits.rate else None

    async def deliver(
        self, job: Job, key: str, payload: bytes, fp: str, *, attempt: int | None, tries: Tries,
        observer: SendObserver | None,
    ) -> SendResult:
        """POST until the outcome is final; a ``SendResult``, ``FatalError`` or ``RetryableError``."""
        transient = 0
        budget = self.in_flight.budgeted()
        while True:
            tries.count += 1
            started = time.monotonic() if observer is not None else 0.0
            outcome, status, data = await self._post(key, payload, tries)
            if observer is not None:
                observer.on_try(_try_info(tries.count, status, time.monotonic() - started, outcome, self._redact))
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "idemsend: key=%s job=%s try=%s queue_attempt=%s -> %s", key, job.id, tries.count, attempt,
                    self._redact.text(repr(outcome)),
                    extra=fields(key, job_id=job.id, attempt=attempt, outcome=type(outcome).__name__.lower()),
                )
            if isinstance(outcome, Sent):
                return SendResult(
                    key=key, id=outcome.id, status=status, response=data, replayed=outcome.replayed,
                    attempts=tries.count, fingerprint=fp, job_id=job.id,
                )
            if isinstance(outcome, Fatal):
                raise fatal_error(
                    outcome.code, self._redact.text(outcome.message), key, setup=outcome.scope == "engine",
                    maybe_sent=tries.may_have_run,
                )
            if isinstance(outcome, InFlight):
                delay = budget.next()
                if delay is None:
                    raise RetryableError(
                        f"key {key!r} may have been sent: it stayed in flight at the provider for"
                        f" {budget.waited:.1f}s; retry later with the same job",
                        retry_after=self.in_flight.delay, key=key, reason="in_flight", maybe_sent=True,
                    )
                if observer is not None:
                    observer.on_wait(WaitInfo("in_flight", delay, "IDEMPOTENCY_IN_FLIGHT"))
                await asyncio.sleep(delay)
                continue
            transient += 1
            reason = self._redact.text(outcome.reason)
            after = finite_delay(outcome.after)
            if after is not None and self._limiter is not None:
                self._limiter.pause(after)
            delay = after if after is not None else self.retry.next_delay(transient)
            if transient > self.retry.retries or delay > self.retry.max_inline_delay:
                # retry_after is the provider's ask only; without one, the queue's own
                # backoff decides, so retries spread over an outage instead of bunching.
                raise RetryableError(
                    f"key {key!r} {_sent_state(tries)} after {tries.count} tries ({reason}); retry later with"
                    " the same job",
                    retry_after=after, key=key, reason=reason, maybe_sent=tries.may_have_run,
                )
            if observer is not None:
                observer.on_wait(WaitInfo("backoff", delay, reason))
            await asyncio.sleep(delay)

    async def _post(self, key: str, payload: bytes, tries: Tries) -> tuple[Outcome, int, Any]:
        headers = {**self._headers, self._idem_header: key}
        async with self._sem:
            if self._limiter is not None:
                wait = await self._limiter.acquire(self.retry.max_inline_delay)
                if wait:
                    # The rate limit (or a 429's pause) holds every slot longer than a job may
                    # wait inline: back to the queue, nothing sent.
                    return Retry(wait, f"rate limit: the next slot is {wait:.1f}s away"), 0, None
            # Counted as possibly run from the moment the request may leave, so a
            # cancellation mid-request is never mistaken for "nothing was sent".
            earlier, tries.maybe_sent = tries.maybe_sent, True
            try:
                response = await self.transport.post(TransportRequest(self.url, headers, payload))
            except TransportError as exc:
                if not exc.may_have_reached:
                    tries.maybe_sent = earlier
                return Retry(None, str(exc)), 0, None
        raw = response.body
        redact = self._redact
        if redact:
            raw = redact.body(raw)
        tries.body_size = len(raw)
        try:
            data = _parse(raw) if raw else None
        except (ValueError, RecursionError):
            data = None
        if redact and data is not None and redact.needs_tree(raw):
            try:
                data = redact.tree(data)
            except RecursionError:
                data = None
        outcome = self.classifier.classify(HTTPResponse(response.status, response.headers, data))
        if _not_run(outcome, response.status):
            tries.maybe_sent = earlier
        return outcome, response.status, data


def _sent_state(tries: Tries) -> str:
    """How a retryable error's text states what ran: never "not sent" when it may have."""
    if tries.maybe_sent:
        return "may have been sent: no final answer"
    if tries.earlier:
        return "may have been sent by an earlier call or delivery: no final answer"
    return "not sent yet"


_scan: Any = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # the stub names the wrong type


def _parse(raw: bytes) -> Any:
    """``json.loads(raw)``, in a third of its time for the usual answer (UTF-8, nothing around
    the value): json.loads's own wrappers (encoding detection, whitespace matching) were
    most of what parsing a short answer cost. Anything else takes json.loads's own path."""
    try:
        text = raw.decode()
        value, end = _scan(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError):
        return json.loads(raw)  # a BOM, UTF-16, leading whitespace, or not JSON: json decides
    if end != len(text):
        return json.loads(raw)  # trailing whitespace or more after the value: json decides
    return value


def _try_info(number: int, status: int, duration: float, outcome: Outcome, redact: Redactor) -> TryInfo:
    if isinstance(outcome, Sent):
        return TryInfo(number, status, duration, "sent")
    if isinstance(outcome, InFlight):
        return TryInfo(number, status, duration, "in_flight")
    if isinstance(outcome, Fatal):
        return TryInfo(number, status, duration, "fatal", outcome.code)
    return TryInfo(number, status, duration, "retry" if status else "error", redact.text(outcome.reason))
