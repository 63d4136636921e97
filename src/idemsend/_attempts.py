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
from dataclasses import dataclass
from json.scanner import make_scanner
from typing import Any, Literal, TypeVar

from ._classify import MAX_RETRY_AFTER, Fatal, HTTPResponse, InFlight, Outcome, ResultClassifier, Retry, Sent
from ._config import InFlightWait, Limits, RetryPolicy
from ._errors import MISMATCH, IdemsendError, RetryableError, RetryReason, fatal_error
from ._hooks import SendObserver, TryInfo, WaitInfo
from ._limits import RateLimiter
from ._log import fields, key_ref
from ._prepared import PreparedSend, TryHistory
from ._redact import Redactor, is_secret_header
from ._result import SendResult
from ._signing import Signer, merge_signed, sign_try
from ._transport import Transport, TransportError, TransportRequest

__all__ = ["Attempts", "finite_delay"]

log = logging.getLogger("idemsend.engine")


def finite_delay(value: float | None) -> float | None:
    """A provider's (or a custom classifier's) delay, made finite and bounded."""
    if value is None or math.isnan(value):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


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
        idempotency_header: str | None,
        transport: Transport,
        classifier: ResultClassifier,
        retry: RetryPolicy,
        in_flight: InFlightWait,
        limits: Limits,
        redact: Redactor,
        timeout: float | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.url = url
        self._signer = signer
        self.timeout = timeout
        self.transport = transport
        self.classifier = classifier
        self.retry = retry
        self.in_flight = in_flight
        self._headers = dict(headers)
        self._idem_header = idempotency_header
        self._redact = redact
        self._sem = asyncio.Semaphore(limits.max_in_flight)
        self._limiter = RateLimiter(limits.rate) if limits.rate else None

    async def send(self, send: PreparedSend, observer: SendObserver | None) -> SendResult:
        """Deliver ``send`` without a ledger: what an error says of earlier deliveries comes
        from the queue's attempt number."""
        return await self.deliver(send, observer, TryHistory(earlier=send.earlier_may_have_run))

    async def deliver(self, send: PreparedSend, observer: SendObserver | None, history: TryHistory) -> SendResult:
        """POST until the outcome is final; a ``SendResult``, ``FatalError`` or ``RetryableError``,
        each carrying the tries (``history``, which the caller reads when anything else
        ends the attempt, such as a cancellation)."""
        key, job = send.key, send.job
        transient = 0
        budget = self.in_flight.budgeted()
        while True:
            started = time.monotonic()
            answer = await self._post(key, send.payload, history)
            outcome = answer.outcome
            if isinstance(outcome, Sent):
                unexpected = outcome.replayed and _replay_unexpected(history)
                self._close(history, answer, started, None, send, observer)
                if unexpected:
                    log.warning(
                        "idemsend: %s was answered as a replay on its first send (job %s): the provider had"
                        " this key from before (another job, or another system, used it; or the ledger lost"
                        " this job's record of an earlier send); the result is not a fresh send",
                        key_ref(key), job.id,
                        extra=fields(key, job_id=job.id, code="UNEXPECTED_REPLAY", outcome="replayed"),
                    )
                return SendResult(
                    key=key, id=outcome.id, status=answer.status, response=answer.data, replayed=outcome.replayed,
                    attempts=history.count, fingerprint=send.fingerprint, job_id=job.id, tries=history.tries,
                    unexpected_replay=unexpected,
                )
            if isinstance(outcome, Fatal):
                self._close(history, answer, started, None, send, observer)
                raise _with_tries(fatal_error(
                    outcome.code, self._redact.text(outcome.message), key, setup=outcome.scope == "engine",
                    maybe_sent=history.may_have_run,
                ), history)
            if isinstance(outcome, InFlight):
                delay = budget.next()
                self._close(history, answer, started, delay, send, observer)
                if delay is None:
                    waited = f"it stayed in flight at the provider for {budget.waited:.1f}s"
                    raise _with_tries(RetryableError(
                        f"key {key!r} may have been sent: {waited}; retry later with the same job",
                        retry_after=self.in_flight.delay, key=key, reason="in_flight", detail=waited, maybe_sent=True,
                    ), history)
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
            last = transient > self.retry.retries or delay > self.retry.max_inline_delay
            self._close(history, answer, started, None if last else delay, send, observer)
            if last:
                # retry_after is the provider's ask only; without one, the queue's own
                # backoff decides, so retries spread over an outage instead of bunching.
                raise _with_tries(RetryableError(
                    f"key {key!r} {_sent_state(history)} after {history.count} tries ({reason}); retry later with"
                    " the same job",
                    retry_after=after, key=key, reason=_retry_reason(answer), detail=reason,
                    maybe_sent=history.may_have_run,
                ), history)
            if observer is not None:
                observer.on_wait(WaitInfo("backoff", delay, reason))
            await asyncio.sleep(delay)

    def _close(
        self, history: TryHistory, answer: _Answer, started: float, delay: float | None, send: PreparedSend,
        observer: SendObserver | None,
    ) -> None:
        """Write the try into the history, and tell the hooks and the DEBUG log."""
        info = _try_info(history.next_number, answer, time.monotonic() - started, delay, self._redact)
        history.close(info)
        if observer is not None:
            observer.on_try(info)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "idemsend: key=%s job=%s try=%s queue_attempt=%s -> %s", send.key, send.job.id, info.number,
                send.attempt, self._redact.text(repr(answer.outcome)),
                extra=fields(send.key, job_id=send.job.id, attempt=send.attempt,
                             outcome=type(answer.outcome).__name__.lower()),
            )

    async def _post(self, key: str, payload: bytes, history: TryHistory) -> _Answer:
        headers = dict(self._headers)
        if self._idem_header is not None:  # None: the key travels in the body
            headers[self._idem_header] = key
        redact = self._redact
        async with self._sem:
            if self._limiter is not None:
                wait = await self._limiter.acquire(self.retry.max_inline_delay)
                if wait:
                    # The rate limit (or a 429's pause) holds every slot longer than a job may
                    # wait inline: back to the queue, nothing sent.
                    refused = Retry(wait, f"rate limit: the next slot is {wait:.1f}s away")
                    return _Answer(refused, 0, None, may_have_run=False, error="rate_limit")
            if self._signer is not None:
                # signed now, once the slot is ours: the timestamp is this try's own
                signed = sign_try(self._signer, key, payload, history.next_number)
                headers = merge_signed(headers, signed, key_header=self._idem_header, key=key)
                # a receiver that echoes a signature back must not put it in a result or record
                redact = redact.adding(v for k, v in signed.items() if is_secret_header(k))
            # Open from the moment the request may leave, so a cancellation mid-request is
            # never mistaken for "nothing was sent".
            history.open()
            try:
                response = await self.transport.post(TransportRequest(self.url, headers, payload, self.timeout))
            except TransportError as exc:
                return _Answer(Retry(None, str(exc)), 0, None, may_have_run=exc.may_have_reached, error=exc.kind)
        raw = response.body
        if redact:
            raw = redact.body(raw)
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
        return _Answer(
            outcome, response.status, data, may_have_run=not _not_run(outcome, response.status), body_size=len(raw)
        )


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one try got back, before the loop decides what follows."""

    outcome: Outcome
    status: int
    data: Any
    may_have_run: bool
    body_size: int = 0
    error: str | None = None


E = TypeVar("E", bound=IdemsendError)


def _with_tries(error: E, history: TryHistory) -> E:
    """``error`` carrying the tries that led to it."""
    error.tries = history.tries
    return error


def _replay_unexpected(history: TryHistory) -> bool:
    """A replay answered to the try now closing is unexpected when nothing could have sent
    the key before it: no earlier delivery (a fresh claim, or the queue's first delivery)
    and no earlier try of this call that may have run."""
    return not history.earlier and not any(t.may_have_run for t in history.tries)


def _retry_reason(answer: _Answer) -> RetryReason:
    """The one word for a give-up on a not-final answer: what the last try met."""
    if answer.error == "rate_limit":
        return "rate_limit"
    return "transport" if answer.status == 0 else "provider"


def _sent_state(history: TryHistory) -> str:
    """How a retryable error's text states what ran: never "not sent" when it may have."""
    if history.maybe_sent:
        return "may have been sent: no final answer"
    if history.earlier:
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


def _try_info(number: int, answer: _Answer, duration: float, delay: float | None, redact: Redactor) -> TryInfo:
    outcome, status = answer.outcome, answer.status
    kind: Literal["sent", "in_flight", "retry", "fatal", "error"]
    if isinstance(outcome, Sent):
        kind, reason = "sent", None
    elif isinstance(outcome, InFlight):
        kind, reason = "in_flight", None
    elif isinstance(outcome, Fatal):
        kind, reason = "fatal", outcome.code
    else:
        kind, reason = ("retry" if status else "error"), redact.text(outcome.reason)
    return TryInfo(
        number, status, duration, kind, reason,
        may_have_run=answer.may_have_run, body_size=answer.body_size, delay=delay, error=answer.error,
    )
