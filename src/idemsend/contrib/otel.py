"""OpenTelemetry traces and metrics for every ``Engine.send`` (``pip install 'idemsend[otel]'``).

```python
from idemsend import Engine
from idemsend.contrib.otel import OpenTelemetryHook

engine = Engine(url, key="welcome:{user_id}:{job_id}", api_key=KEY, hooks=[OpenTelemetryHook()])
```

With no arguments the hook uses the global tracer and meter providers (whatever the
application set up with the OpenTelemetry SDK); pass ``tracer_provider=`` /
``meter_provider=`` to use others. This is the only idemsend module that imports
OpenTelemetry, and it needs ``opentelemetry-api`` only.

**Traces.** One ``INTERNAL`` span, ``idemsend.send``, per ``send``: a child of the caller's
current span (the queue's task span) and, because it is made current for the length of the
send, the parent of aiohttp's ``CLIENT`` span for each HTTP try when
``opentelemetry-instrumentation-aiohttp-client`` is on. It is not a ``CLIENT`` span: one send
is a logical operation over several HTTP tries, ledger calls and waits, and the HTTP
conventions ask for one client span per physical request and no encompassing logical client
span. Tries, waits and ledger calls are span events (``idemsend.try``, ``idemsend.wait``,
``idemsend.ledger``). The idempotency key and the job id are recorded only as SHA-256
prefixes (``idemsend.key_hash``, ``idemsend.job.id_hash``; salted with ``hash_salt=``) unless
``record_key=True``; job data never is.

**Metrics.** ``idemsend.sends`` and ``idemsend.send.duration`` by outcome and ``error.type``,
``idemsend.send.active``, ``idemsend.provider.requests`` by status class,
``idemsend.provider.retries`` and ``idemsend.send.waits`` by bounded reason,
``idemsend.ledger.operation.duration`` by operation and result, and
``idemsend.ledger.batch.size`` (wire ``record_ledger_batch`` as a ledger's ``on_batch``).
Every attribute value comes from a small fixed set (values from outside idemsend, such as a
provider's error codes, are capped in number); no key, job id, message or other unbounded
value is ever a metric attribute.

**Cost.** With no SDK configured no span is started at all (the check is made at most once a
second, so a provider set later is picked up), and the metric calls go to the API's no-op
instruments. Attribute dicts are built once per distinct label set and reused.

docs/observability.md lists every span, attribute, event and metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import Token
from types import TracebackType
from typing import Final

from .. import __version__
from .._errors import FatalError, IdemsendError, MissingExtraError
from .._hooks import LedgerInfo, Observer, OutcomeInfo, SendInfo, SendObserver, TryInfo, WaitInfo

try:
    from opentelemetry import context as otel_context  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry import metrics, trace  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry.trace import SpanKind, Status, StatusCode  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError("otel", "opentelemetry-api") from exc

__all__ = ["DURATION_BUCKETS", "LEDGER_BUCKETS", "OpenTelemetryHook"]

log = logging.getLogger("idemsend.contrib.otel")

#: Bucket boundaries (seconds) of ``idemsend.send.duration``: 1 ms to 30 s.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Bucket boundaries (seconds) of ``idemsend.ledger.operation.duration``: 0.5 ms to 30 s.
LEDGER_BUCKETS: Final = (0.0005, *DURATION_BUCKETS)

_SPAN_NAME: Final = "idemsend.send"
_OTHER: Final = "_OTHER"  # error.type's well-known fallback value
_HASH_CHARS: Final = 16  # 64 bits of SHA-256: unique enough to look up, short in every span
_MAX_DESCRIPTION: Final = 300
_RECHECK_SECONDS: Final = 1.0
_MIN_BARE: Final = 6  # a key at least this long is replaced in an error description wherever it appears
_clock = time.perf_counter

# A label value from outside idemsend (a provider's error code, a queue name) must look like
# an identifier and is capped in number; anything else is "_OTHER".
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")

_STATUS_CLASS: Final = {status: f"{status // 100}xx" for status in range(100, 600)}
# RetryableError.reason words that are the error type as they are; "provider" and
# "transport" are told apart further by the last try ("5xx", "429", "transport").
_FIXED_REASONS: Final = {"in_flight": "in_flight", "busy": "busy", "ledger": "ledger", "ledger_config": "ledger_config",
                         "rate_limit": "rate_limit", "interrupted": "interrupted", "retryable": "retryable"}
_WAIT_REASONS: Final = {"in_flight": "in_flight", "busy": "busy"}
_NO_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


class _Bounded:
    """Caps the distinct values one label takes: the first ``limit`` identifier-like values
    pass as they are, anything else (later ones, free text) is ``"_OTHER"``."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        seen = self._seen
        if value in seen:
            return value
        if len(seen) >= self._limit or not _IDENTIFIER.fullmatch(value):
            return _OTHER
        seen.add(value)
        return value


def _status_class(status: int) -> str:
    """``"2xx"``... for an HTTP status, ``"error"`` for no answer (status 0)."""
    if status == 0:
        return "error"
    return _STATUS_CLASS.get(status, _OTHER)


def _local_refusal(info: TryInfo) -> bool:
    """The engine's own rate limiter refused the try: no request left the process."""
    return info.error == "rate_limit"


def _try_reason(info: TryInfo) -> str:
    """Why a try was not final, as one word from a fixed set."""
    if info.outcome == "in_flight":
        return "in_flight"
    status = info.status
    if status == 0:
        return "rate_limit" if _local_refusal(info) else "transport"
    if status == 429:
        return "rate_limit"
    return _status_class(status)


class _Labels:
    """The metric attribute dicts of one (server, queue), each built once and reused: the
    SDK reads them, nobody writes them after they are made."""

    __slots__ = ("base", "ended", "requests", "retries", "succeeded", "waits")

    def __init__(self, server: str, queue: str | None) -> None:
        base: dict[str, str] = {"server.address": server}
        if queue is not None:
            base["idemsend.queue"] = queue
        self.base: Mapping[str, str] = base
        # outcome -> attrs of the three successful outcomes, made up front
        self.succeeded: dict[str, Mapping[str, str]] = {
            outcome: {**base, "idemsend.outcome": outcome} for outcome in ("sent", "replayed", "from_ledger")
        }
        # (outcome, error.type) -> attrs of the others
        self.ended: dict[tuple[str, str | None], Mapping[str, str]] = {}
        self.requests: dict[str, Mapping[str, str]] = {}
        self.retries: dict[str, Mapping[str, str]] = {}
        self.waits: dict[tuple[str, str], Mapping[str, str]] = {}

    def send(self, outcome: str, error_type: str | None) -> Mapping[str, str]:
        attrs = self.ended.get((outcome, error_type))
        if attrs is None:
            made = {**self.base, "idemsend.outcome": outcome}
            if error_type is not None:
                made["error.type"] = error_type
            attrs = self.ended[(outcome, error_type)] = made
        return attrs

    def request(self, status_class: str) -> Mapping[str, str]:
        attrs = self.requests.get(status_class)
        if attrs is None:
            attrs = self.requests[status_class] = {**self.base, "idemsend.http.status_class": status_class}
        return attrs

    def retry(self, reason: str) -> Mapping[str, str]:
        attrs = self.retries.get(reason)
        if attrs is None:
            attrs = self.retries[reason] = {**self.base, "idemsend.retry.reason": reason}
        return attrs

    def wait(self, kind: str, reason: str) -> Mapping[str, str]:
        attrs = self.waits.get((kind, reason))
        if attrs is None:
            attrs = self.waits[(kind, reason)] = {
                **self.base, "idemsend.wait.kind": kind, "idemsend.wait.reason": reason,
            }
        return attrs


class OpenTelemetryHook:
    """An idemsend ``Hook`` that reports every send to OpenTelemetry: a span and metrics.

    ``Engine(url, key=..., hooks=[OpenTelemetryHook()])``. One hook may serve several
    engines; it keeps its instruments and label sets for its whole life.

    * ``tracer_provider`` / ``meter_provider``: where spans and metrics go (default: the
      global providers, as ``trace.get_tracer`` and ``metrics.get_meter`` find them).
    * ``record_key``: also record the idempotency key (``idemsend.key``), the job id
      (``idemsend.job.id``) and the provider's id for the send (``idemsend.provider.id``) on
      the span, in clear. Off by default: keys and job ids may hold user ids. Never on metrics.
    * ``hash_salt``: prefixed to the key and job id before hashing them for
      ``idemsend.key_hash`` / ``idemsend.job.id_hash``; without it anyone who can guess a key
      can confirm it from its hash.
    * ``describe_errors``: the span status description of a failed send is the engine's
      error message (credentials are never in it; the key and job id are replaced by their
      hashes unless ``record_key``), or only the class name of an exception that is not
      idemsend's. A provider's message may echo request data: pass ``False`` to leave the
      description out.

    Nothing it does raises into a send: a failure to record (a broken span processor,
    exporter or meter) is logged at DEBUG on ``idemsend.contrib.otel`` and the send goes on.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        record_key: bool = False,
        hash_salt: str | bytes | None = None,
        describe_errors: bool = True,
    ) -> None:
        self.record_key = record_key
        self.describe_errors = describe_errors
        salt = hash_salt.encode() if isinstance(hash_salt, str) else hash_salt
        self._salt = salt or b""
        self._tracer: trace.Tracer = trace.get_tracer(__name__, __version__, tracer_provider)
        # None: follow the global provider (re-checked at most once a second, so one set
        # after this hook was made is picked up); True/False: an explicit provider.
        self._tracing_fixed: bool | None = (
            None if tracer_provider is None or isinstance(tracer_provider, trace.ProxyTracerProvider)
            else not isinstance(tracer_provider, trace.NoOpTracerProvider)
        )
        self._tracing = False
        self._recheck_at = 0.0
        meter: metrics.Meter = metrics.get_meter(__name__, __version__, meter_provider)
        self._sends: metrics.Counter = meter.create_counter(
            "idemsend.sends", unit="{send}", description="Sends that ended, by outcome.")
        self._duration: metrics.Histogram = _histogram(
            meter, "idemsend.send.duration", "s", "How long each send took, from start to outcome.", DURATION_BUCKETS)
        self._active: metrics.UpDownCounter = meter.create_up_down_counter(
            "idemsend.send.active", unit="{send}", description="Sends running now.")
        self._requests: metrics.Counter = meter.create_counter(
            "idemsend.provider.requests", unit="{request}",
            description="HTTP requests to the provider, by status class ('error': no HTTP answer).")
        self._retries: metrics.Counter = meter.create_counter(
            "idemsend.provider.retries", unit="{retry}",
            description="HTTP requests that repeated an earlier one of the same send, by why the earlier one was not"
                        " final.")
        self._waits: metrics.Counter = meter.create_counter(
            "idemsend.send.waits", unit="{wait}", description="In-process waits before the next try or claim.")
        self._ledger: metrics.Histogram = _histogram(
            meter, "idemsend.ledger.operation.duration", "s",
            "How long each ledger call took, by operation and result (its count is the number of calls).",
            LEDGER_BUCKETS)
        self._batch: metrics.Histogram = meter.create_histogram(
            "idemsend.ledger.batch.size", unit="{operation}",
            description="Ledger operations sent together in one batch (group commit).")
        self._labels: dict[tuple[str, str | None], _Labels] = {}
        self._ledger_labels: dict[tuple[str, str], Mapping[str, str]] = {}
        self._codes = _Bounded(64)  # error.type values from outside idemsend (providers' codes)
        self._queues = _Bounded(16)
        self._ledger_words = _Bounded(32)

    def __repr__(self) -> str:
        return f"<OpenTelemetryHook record_key={self.record_key}>"

    # -- the Hook protocol ---------------------------------------------------------------

    def send_scope(self, info: SendInfo) -> AbstractContextManager[SendObserver]:
        """The scope of one send (the engine enters it): starts the span and counts the send
        as active; on exit ends both and records the outcome."""
        try:
            labels = self._labels.get((info.server_address, info.queue))
            if labels is None:
                labels = self._new_labels(info.server_address, info.queue)
            return _Send(self, info, labels)
        except Exception:  # a hook must never break a send: this one goes unrecorded
            log.debug("idemsend: could not open a send scope", exc_info=True)
            return _UNRECORDED

    def record_ledger_batch(self, size: int) -> None:
        """Record one group-commit batch of ``size`` ledger operations: pass it as a ledger's
        ``on_batch`` (``RedisLedger.from_url(url, on_batch=hook.record_ledger_batch)``).
        Never raises (a broken meter is logged at DEBUG)."""
        try:
            self._batch.record(size)
        except Exception:
            log.debug("idemsend: could not record a ledger batch", exc_info=True)

    # -- helpers the scope uses ------------------------------------------------------------

    def _new_labels(self, server: str, queue: str | None) -> _Labels:
        bounded = queue if queue is None else self._queues(queue)
        labels = self._labels.get((server, bounded))
        if labels is None:
            labels = self._labels[(server, bounded)] = _Labels(server, bounded)
        # Kept under the queue's own name only when that name is a label value: a queue
        # name past the cap is looked up again each time rather than kept forever.
        return labels

    def _tracing_global(self, now: float) -> bool:
        """Whether the global tracer provider is a real one (an SDK's): asked again once a
        second at most (get_tracer_provider() reads os.environ, too slow for every send)."""
        self._recheck_at = now + _RECHECK_SECONDS
        self._tracing = not isinstance(trace.get_tracer_provider(), _NO_PROVIDERS)
        return self._tracing

    def _hash(self, value: str) -> str:
        return hashlib.sha256(self._salt + value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]

    def _ledger_attrs(self, op: str, result: str) -> Mapping[str, str]:
        attrs = self._ledger_labels.get((op, result))
        if attrs is None:
            made = {
                "idemsend.ledger.operation": self._ledger_words(op),
                "idemsend.ledger.result": self._ledger_words(result),
            }
            if result == "unavailable":
                made["error.type"] = "unavailable"
            attrs = self._ledger_labels[(op, result)] = made
        return attrs


def _histogram(
    meter: metrics.Meter, name: str, unit: str, description: str, buckets: tuple[float, ...]
) -> metrics.Histogram:
    try:
        made: metrics.Histogram = meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api < 1.23 has no bucket advice: the SDK's defaults (or a View) apply
        made = meter.create_histogram(name, unit=unit, description=description)
    return made


class _Send:
    """One send: the context manager the engine enters and the observer it talks to.

    Written for the no-SDK case first (the hook must cost nearly nothing there): no span,
    a handful of attribute look-ups, and the metric calls to the API's no-op instruments."""

    __slots__ = ("_hook", "_info", "_labels", "_last", "_outcome", "_span", "_started", "_token", "_tries")

    def __init__(self, hook: OpenTelemetryHook, info: SendInfo, labels: _Labels) -> None:
        self._hook = hook
        self._info = info
        self._labels = labels
        self._span: trace.Span | None = None  # only while it records
        self._token: Token[otel_context.Context] | None = None
        self._tries = 0
        self._last: TryInfo | None = None
        self._outcome: OutcomeInfo | None = None

    def __enter__(self) -> _Send:
        hook = self._hook
        self._started = now = _clock()
        try:
            hook._active.add(1, self._labels.base)
        except Exception:  # a hook must never break a send
            log.debug("idemsend: could not count an active send", exc_info=True)
        tracing = hook._tracing_fixed
        if tracing is None:
            try:
                tracing = hook._tracing if now < hook._recheck_at else hook._tracing_global(now)
            except Exception:
                tracing = False
        if tracing:
            span: trace.Span | None = None
            try:
                span = hook._tracer.start_span(
                    _SPAN_NAME, kind=SpanKind.INTERNAL, attributes=self._start_attributes()
                )
                # Current even when sampled out, so the HTTP client spans follow its decision.
                self._token = otel_context.attach(trace.set_span_in_context(span))
                if span.is_recording():
                    self._span = span
            except Exception:  # a hook must never break a send
                log.debug("idemsend: could not start the send span", exc_info=True)
                if span is not None and self._span is None:  # started, then attach failed: end it
                    with contextlib.suppress(Exception):
                        span.end()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Nothing here may raise: the send is over (sent, perhaps) and the engine is about to
        # hand its result or error to the caller; an exception from a broken SDK, processor
        # or exporter would replace it, and the queue would run a sent job again. Each step
        # is guarded on its own, so one broken part does not stop the others.
        hook, labels = self._hook, self._labels
        try:
            hook._active.add(-1, labels.base)
        except Exception:
            log.debug("idemsend: could not count an active send", exc_info=True)
        try:
            duration = _clock() - self._started
            info = self._outcome
            outcome: str
            if info is not None and info.error is None:  # sent, replayed, from_ledger
                outcome, error_type, error = info.outcome, None, None
                attrs = labels.succeeded.get(outcome) or labels.send(outcome, None)
            else:
                outcome, error_type, error = self._failure(exc_type, exc)
                attrs = labels.send(outcome, error_type)
            try:
                if self._span is not None:
                    self._finish_span(self._span, outcome, error_type, error)
            finally:
                hook._sends.add(1, attrs)
                hook._duration.record(duration, attrs)
        except Exception:
            log.debug("idemsend: could not record a send", exc_info=True)
        if self._span is not None:
            try:
                self._span.end()
            except Exception:  # a span processor's on_end, or a synchronous exporter
                log.debug("idemsend: could not end the send span", exc_info=True)
        if self._token is not None:
            try:
                otel_context.detach(self._token)
            except Exception:
                log.debug("idemsend: could not detach the send span", exc_info=True)

    # -- SendObserver --------------------------------------------------------------------

    def on_try(self, info: TryInfo) -> None:
        """After each HTTP try: count the request (and the retry), add an event."""
        try:
            status = info.status
            if status:
                status_class = _STATUS_CLASS.get(status, _OTHER)
            elif _local_refusal(info):
                self._last = info  # its reason names the send's error; it was no request
                return
            else:
                status_class = "error"
            previous, self._last = self._last, info
            self._tries += 1
            hook, labels = self._hook, self._labels
            attrs = labels.requests.get(status_class) or labels.request(status_class)
            hook._requests.add(1, attrs)
            if previous is not None:
                hook._retries.add(1, labels.retry(_try_reason(previous)))
            if self._span is not None:
                event: dict[str, str | int | float] = {
                    "idemsend.try.number": info.number, "idemsend.try.outcome": info.outcome,
                    "idemsend.try.duration": info.duration,
                }
                if status:
                    event["http.response.status_code"] = status
                if info.outcome == "fatal":
                    event["error.type"] = hook._codes(info.reason or _OTHER)
                elif info.outcome != "sent":
                    event["error.type"] = _try_reason(info)
                self._span.add_event("idemsend.try", event)
        except Exception:
            log.debug("idemsend: could not record a try", exc_info=True)

    def on_wait(self, info: WaitInfo) -> None:
        """Before each wait: count it by kind and reason, add an event."""
        try:
            reason = _WAIT_REASONS.get(info.kind)
            if reason is None:
                reason = _try_reason(self._last) if self._last is not None else _OTHER
            self._hook._waits.add(1, self._labels.wait(info.kind, reason))
            if self._span is not None:
                self._span.add_event("idemsend.wait", {
                    "idemsend.wait.kind": info.kind, "idemsend.wait.reason": reason, "idemsend.wait.delay": info.delay,
                })
        except Exception:
            log.debug("idemsend: could not record a wait", exc_info=True)

    def on_ledger(self, info: LedgerInfo) -> None:
        """After each ledger call: record its latency by operation and result, add an event."""
        try:
            attrs = self._hook._ledger_attrs(info.op, info.result)
            self._hook._ledger.record(info.duration, attrs)
            if self._span is not None:
                self._span.add_event("idemsend.ledger", {**attrs, "idemsend.ledger.duration": info.duration})
        except Exception:
            log.debug("idemsend: could not record a ledger call", exc_info=True)

    def on_outcome(self, info: OutcomeInfo) -> None:
        """Once, as the send ends: kept for ``__exit__``, which records it."""
        self._outcome = info

    # -- the end of a send ---------------------------------------------------------------

    def _failure(
        self, exc_type: type[BaseException] | None, exc: BaseException | None
    ) -> tuple[str, str | None, BaseException | None]:
        """(outcome, error.type, the error) of a send that did not succeed."""
        info = self._outcome
        if info is not None:
            if info.outcome == "retryable":
                return "retryable", self._retry_type(info), info.error
            return info.outcome, self._hook._codes(info.code or _OTHER), info.error
        if exc_type is None:  # the engine always reports an outcome; be safe anyway
            return "error", _OTHER, None
        if issubclass(exc_type, asyncio.CancelledError):
            return "cancelled", None, None  # stopped by its caller: not an error of the send
        return "error", self._hook._codes(exc_type.__qualname__), exc

    def _retry_type(self, info: OutcomeInfo) -> str:
        fixed = _FIXED_REASONS.get(info.code or "")
        if fixed is not None:
            return fixed
        if self._last is not None:  # "HTTP 503", a transport error's text...: the last try says it in one word
            return _try_reason(self._last)
        return _OTHER

    def _start_attributes(self) -> dict[str, str | int]:
        info, hook = self._info, self._hook
        attrs: dict[str, str | int] = {"server.address": info.server_address}
        if info.server_port is not None:
            attrs["server.port"] = info.server_port
        queue = self._labels.base.get("idemsend.queue")
        if queue is not None:
            attrs["idemsend.queue"] = queue
        if info.attempt is not None:
            attrs["idemsend.attempt"] = info.attempt
        attrs["idemsend.key_hash"] = hook._hash(info.key)
        attrs["idemsend.job.id_hash"] = hook._hash(info.job_id)
        if hook.record_key:
            attrs["idemsend.key"] = info.key
            attrs["idemsend.job.id"] = info.job_id
        return attrs

    def _finish_span(
        self, span: trace.Span, outcome: str, error_type: str | None, error: BaseException | None
    ) -> None:
        attrs: dict[str, str | int | bool] = {"idemsend.outcome": outcome, "idemsend.tries": self._tries}
        if isinstance(error, IdemsendError):
            # whether the provider may have run this job (one of its requests may have reached it)
            attrs["idemsend.maybe_sent"] = error.maybe_sent
        last = self._last
        if last is not None and last.status:
            attrs["http.response.status_code"] = last.status
        info = self._outcome
        if outcome == "replayed":
            attrs["idemsend.replay.source"] = "provider" if self._tries else "single_flight"
            # a replay on a key's first send: another job or system had used this key
            attrs["idemsend.replay.unexpected"] = info is not None and info.code == "UNEXPECTED_REPLAY"
        if self._hook.record_key and info is not None and info.result is not None and info.result.id is not None:
            attrs["idemsend.provider.id"] = str(info.result.id)
        if error_type is not None:
            attrs["error.type"] = error_type
        span.set_attributes(attrs)
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, self._describe(error)))

    def _describe(self, error: BaseException | None) -> str | None:
        """The span status description: the error's message, without the key and job id
        (their hashes stand in) unless ``record_key``; None with ``describe_errors=False``."""
        hook = self._hook
        if error is None or not hook.describe_errors:
            return None
        if not isinstance(error, IdemsendError):
            # Not an error idemsend wrote (a bug, a library's exception): its text was never
            # checked for request data, so only its type is told.
            return type(error).__qualname__
        text = (error.detail or str(error)) if isinstance(error, FatalError) else str(error)
        if not hook.record_key:
            info = self._info
            keys = [info.key]
            recorded = getattr(error, "recorded_key", None)
            if isinstance(recorded, str) and recorded != info.key:
                keys.append(recorded)
            for key in keys:
                # The engine quotes keys with repr(); a provider's message may quote one its
                # own way, or not at all. Keys first: a key may contain the job id.
                text = _replace(text, key, f"<key {hook._hash(key)}>", bare=len(key) >= _MIN_BARE)
            # A job id is often short ("17"): replaced only where quoted, so other text
            # that happens to contain it is never mangled.
            text = _replace(text, info.job_id, f"<job {hook._hash(info.job_id)}>", bare=False)
        return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


def _replace(text: str, value: str, stand_in: str, *, bare: bool) -> str:
    """``text`` with ``value`` replaced where it is quoted (repr, '…', "…"), and everywhere
    if ``bare``."""
    if not value:
        return text
    for quoted in (repr(value), f"'{value}'", f'"{value}"'):
        text = text.replace(quoted, stand_in)
    return text.replace(value, stand_in) if bare else text


class _Unrecorded(Observer):
    """The scope of a send the hook could not open: hears everything, records nothing."""

    __slots__ = ()

    def __enter__(self) -> _Unrecorded:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_UNRECORDED: Final = _Unrecorded()
