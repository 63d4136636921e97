"""OpenTelemetryHook over real sends: the MockProvider (a real aiohttp server), the SDK's
in-memory span exporter and metric reader, aiohttp's own client instrumentation, a real arq
worker on a real Redis, and a provider that echoes the credentials back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk", reason="opentelemetry-sdk is not installed (these tests run in `nox -s otel`)"
)

from aiohttp import web
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

import idemsend.contrib.otel as otel_module
from idemsend import (
    Engine,
    FatalError,
    Hook,
    InFlightWait,
    Job,
    MismatchError,
    RawResponse,
    RetryableError,
    RetryPolicy,
    SendInfo,
    SendObserver,
    TransportError,
    TransportRequest,
)
from idemsend.contrib.otel import OpenTelemetryHook
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider, MockTransport

from ._telemetry import Telemetry, make_telemetry

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk_live_Zq8W3cR7secretvalue"
KEY = "welcome:{user_id}:{job_id}"
BODY = {"to": ["ada@example.com"], "template": "welcome"}


def job(n: int = 1, user: str = "u1") -> Job:
    return Job(f"job-{n}", {"user_id": user})


def key_of(n: int = 1, user: str = "u1") -> str:
    return f"welcome:{user}:job-{n}"


def short_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    telemetry = make_telemetry()
    yield telemetry
    telemetry.shutdown()


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key=API_KEY) as p:
        yield p


def engine(url: str, hook: OpenTelemetryHook, **options: Any) -> Engine:
    return Engine(url, key=KEY, api_key=API_KEY, hooks=[hook], **options)


# -- traces and metrics of each outcome --------------------------------------------------


async def test_a_send_is_one_internal_span_with_the_conventions_attributes(
    otel: Telemetry, provider: MockProvider
) -> None:
    async with engine(provider.emails_url, otel.hook()) as e:
        result = await e.send(job(), BODY, attempt=2, queue="arq")
    [span] = otel.sends()
    assert span.kind is SpanKind.INTERNAL
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None and span.instrumentation_scope.name == "idemsend.contrib.otel"
    assert dict(span.attributes or {}) == {
        "server.address": "127.0.0.1",
        "server.port": provider.port,
        "idemsend.queue": "arq",
        "idemsend.attempt": 2,
        "idemsend.key_hash": short_hash(key_of()),
        "idemsend.job.id_hash": short_hash("job-1"),
        "idemsend.outcome": "sent",
        "idemsend.tries": 1,
        "http.response.status_code": 200,
    }
    [event] = span.events
    assert event.name == "idemsend.try"
    assert event.attributes is not None
    assert event.attributes["http.response.status_code"] == 200 and event.attributes["idemsend.try.outcome"] == "sent"
    assert "error.type" not in event.attributes
    assert result.id is not None

    assert otel.value("idemsend.sends", idemsend__outcome="sent", idemsend__queue="arq") == 1
    assert otel.value("idemsend.send.duration", idemsend__outcome="sent") == 1
    assert otel.value("idemsend.send.active") == 0
    assert otel.value("idemsend.provider.requests", idemsend__http__status_class="2xx") == 1
    assert otel.value("idemsend.provider.retries") == 0
    units = otel.units()
    assert units["idemsend.send.duration"] == "s" and units["idemsend.sends"] == "{send}"
    [(_, duration)] = otel.metrics()["idemsend.send.duration"]
    assert list(duration.explicit_bounds) == list(otel_module.DURATION_BUCKETS)


async def test_a_retried_try_is_an_event_a_retry_and_a_wait(otel: Telemetry, provider: MockProvider) -> None:
    provider.script("5xx")
    async with engine(provider.emails_url, otel.hook(), retry=RetryPolicy(backoff=0.001)) as e:
        await e.send(job(), BODY)
    [span] = otel.sends()
    assert span.attributes is not None and span.attributes["idemsend.tries"] == 2
    events = [(ev.name, dict(ev.attributes or {})) for ev in span.events]
    assert [name for name, _ in events] == ["idemsend.try", "idemsend.wait", "idemsend.try"]
    assert events[0][1]["http.response.status_code"] == 503 and events[0][1]["error.type"] == "5xx"
    assert events[1][1]["idemsend.wait.kind"] == "backoff" and events[1][1]["idemsend.wait.reason"] == "5xx"
    assert "idemsend.queue" not in span.attributes  # called directly, not from a queue adapter
    assert otel.value("idemsend.provider.requests", idemsend__http__status_class="5xx") == 1
    assert otel.value("idemsend.provider.retries", idemsend__retry__reason="5xx") == 1
    assert otel.value("idemsend.send.waits", idemsend__wait__kind="backoff", idemsend__wait__reason="5xx") == 1
    assert otel.value("idemsend.sends", idemsend__outcome="sent") == 1


async def test_a_provider_replay_is_replayed_with_its_source(otel: Telemetry, provider: MockProvider) -> None:
    async with engine(provider.emails_url, otel.hook()) as first:
        await first.send(job(), BODY)
    async with engine(provider.emails_url, otel.hook()) as second:  # another worker, no ledger
        result = await second.send(job(), BODY)
    assert result.replayed and provider.sends == 1
    sent, replayed = otel.sends()
    assert sent.attributes is not None and replayed.attributes is not None
    assert replayed.attributes["idemsend.outcome"] == "replayed"
    assert replayed.attributes["idemsend.replay.source"] == "provider"
    # no queue attempt given: an earlier delivery may have sent it, so the replay is expected
    assert replayed.attributes["idemsend.replay.unexpected"] is False
    assert replayed.attributes["idemsend.tries"] == 1 and replayed.attributes["http.response.status_code"] == 200
    assert otel.value("idemsend.sends", idemsend__outcome="replayed") == 1


async def test_a_replay_on_a_first_delivery_is_marked_unexpected(otel: Telemetry, provider: MockProvider) -> None:
    async with engine(provider.emails_url, otel.hook()) as e:
        await e.send(job(), BODY)
        # another job (same key) on its queue's first delivery: nothing of its own sent the key
        result = await e.send(job(), BODY, attempt=1)
    assert result.replayed and result.unexpected_replay and provider.sends == 1
    replayed = otel.sends()[-1].attributes
    assert replayed is not None and replayed["idemsend.replay.unexpected"] is True
    assert otel.value("idemsend.sends", idemsend__outcome="replayed") == 1


async def test_a_single_flight_replay_made_no_request(otel: Telemetry, provider: MockProvider) -> None:
    provider.processing_delay = 0.2
    async with engine(provider.emails_url, otel.hook()) as e:
        results = await asyncio.gather(e.send(job(), BODY), e.send(job(), BODY))
    assert sorted(r.replayed for r in results) == [False, True] and provider.sends == 1
    by_outcome = {s.attributes["idemsend.outcome"]: s for s in otel.sends() if s.attributes is not None}
    joiner = by_outcome["replayed"].attributes
    assert joiner is not None
    assert joiner["idemsend.replay.source"] == "single_flight" and joiner["idemsend.tries"] == 0
    assert joiner["idemsend.replay.unexpected"] is False
    assert "http.response.status_code" not in joiner
    assert otel.value("idemsend.provider.requests") == 1  # one request for both


async def test_a_send_answered_from_the_ledger_shows_its_ledger_calls(otel: Telemetry, provider: MockProvider) -> None:
    async with engine(provider.emails_url, otel.hook(), ledger=MemoryLedger()) as e:
        await e.send(job(), BODY)
        result = await e.send(job(), BODY)
    assert result.from_ledger
    first, second = otel.sends()
    assert second.attributes is not None and second.attributes["idemsend.outcome"] == "from_ledger"
    assert second.attributes["idemsend.tries"] == 0
    ledger_events = [dict(ev.attributes or {}) for ev in first.events if ev.name == "idemsend.ledger"]
    assert [(e["idemsend.ledger.operation"], e["idemsend.ledger.result"]) for e in ledger_events] == [
        ("claim", "claimed"), ("complete", "ok")
    ]
    assert all(isinstance(e["idemsend.ledger.duration"], float) for e in ledger_events)
    [event] = second.events
    assert event.name == "idemsend.ledger" and event.attributes is not None
    assert event.attributes["idemsend.ledger.result"] == "done"
    op = "idemsend.ledger.operation.duration"
    assert otel.value(op, idemsend__ledger__operation="claim", idemsend__ledger__result="claimed") == 1
    assert otel.value(op, idemsend__ledger__operation="claim", idemsend__ledger__result="done") == 1
    assert otel.value(op, idemsend__ledger__operation="complete") == 1
    assert otel.units()[op] == "s"
    assert otel.value("idemsend.sends", idemsend__outcome="from_ledger") == 1


async def test_a_5xx_is_a_retryable_send_with_an_error_status(otel: Telemetry, provider: MockProvider) -> None:
    provider.script("5xx")
    async with engine(provider.emails_url, otel.hook(), retry=0) as e:
        with pytest.raises(RetryableError):
            await e.send(job(), BODY)
    [span] = otel.sends()
    attrs = span.attributes
    assert attrs is not None
    assert attrs["idemsend.outcome"] == "retryable" and attrs["error.type"] == "5xx"
    assert attrs["http.response.status_code"] == 503 and attrs["idemsend.tries"] == 1
    assert attrs["idemsend.maybe_sent"] is True  # a 503 proves nothing about whether it ran
    assert span.status.status_code is StatusCode.ERROR
    description = span.status.description or ""
    assert "HTTP 503" in description
    assert key_of() not in description and f"<key {short_hash(key_of())}>" in description
    assert otel.value("idemsend.sends", idemsend__outcome="retryable", error__type="5xx") == 1
    assert otel.value("idemsend.send.duration", error__type="5xx") == 1


async def test_a_key_stuck_in_flight_is_retryable_after_its_waits(otel: Telemetry, provider: MockProvider) -> None:
    provider.script(*["in_flight"] * 20)
    hook = otel.hook()
    async with engine(provider.emails_url, hook, in_flight=InFlightWait(delay=0.01, budget=0.03)) as e:
        with pytest.raises(RetryableError) as raised:
            await e.send(job(), BODY)
    assert raised.value.reason == "in_flight"
    [span] = otel.sends()
    assert span.attributes is not None and span.attributes["error.type"] == "in_flight"
    assert span.attributes["idemsend.maybe_sent"] is True
    waits = [ev for ev in span.events if ev.name == "idemsend.wait"]
    assert waits and all((ev.attributes or {})["idemsend.wait.kind"] == "in_flight" for ev in waits)
    tries = span.attributes["idemsend.tries"]
    assert isinstance(tries, int) and tries == len(waits) + 1
    assert otel.value("idemsend.send.waits", idemsend__wait__kind="in_flight") == len(waits)
    assert otel.value("idemsend.provider.retries", idemsend__retry__reason="in_flight") == len(waits)
    assert otel.value("idemsend.provider.requests", idemsend__http__status_class="4xx") == tries


async def test_a_mismatch_is_fatal_with_its_code(otel: Telemetry, provider: MockProvider) -> None:
    async with engine(provider.emails_url, otel.hook()) as e:
        await e.send(job(), BODY)
        with pytest.raises(MismatchError):
            await e.send(job(), {**BODY, "template": "changed"})
    span = otel.sends()[-1]
    assert span.attributes is not None
    assert span.attributes["idemsend.outcome"] == "fatal"
    assert span.attributes["error.type"] == "IDEMPOTENCY_MISMATCH"
    assert span.attributes["http.response.status_code"] == 409
    assert span.status.status_code is StatusCode.ERROR and span.status.description
    assert key_of() not in span.status.description
    [try_event] = span.events
    assert try_event.attributes is not None and try_event.attributes["error.type"] == "IDEMPOTENCY_MISMATCH"
    assert otel.value("idemsend.sends", idemsend__outcome="fatal", error__type="IDEMPOTENCY_MISMATCH") == 1


async def test_record_key_records_the_key_job_and_provider_id_in_clear(otel: Telemetry, provider: MockProvider) -> None:
    async with engine(provider.emails_url, otel.hook(record_key=True), retry=0) as e:
        result = await e.send(job(), BODY)
        provider.script("5xx")
        with pytest.raises(RetryableError):
            await e.send(job(2), BODY)
    sent, failed = otel.sends()
    assert sent.attributes is not None and failed.status.description is not None
    assert sent.attributes["idemsend.key"] == key_of() and sent.attributes["idemsend.job.id"] == "job-1"
    assert sent.attributes["idemsend.provider.id"] == result.id
    assert key_of(2) in failed.status.description
    for _, points in otel.metrics().items():  # never a metric attribute, opted in or not
        for attrs, _ in points:
            assert not {key_of(), key_of(2), "job-1", result.id} & set(attrs.values())


async def test_the_hash_salt_and_the_description_switch(otel: Telemetry, provider: MockProvider) -> None:
    provider.script("5xx")
    async with engine(provider.emails_url, otel.hook(hash_salt="pepper", describe_errors=False), retry=0) as e:
        with pytest.raises(RetryableError):
            await e.send(job(), BODY)
    [span] = otel.sends()
    assert span.attributes is not None
    assert span.attributes["idemsend.key_hash"] == hashlib.sha256(b"pepper" + key_of().encode()).hexdigest()[:16]
    assert span.status.status_code is StatusCode.ERROR and span.status.description is None


# -- nesting -----------------------------------------------------------------------------------


@pytest.fixture
def aiohttp_instrumented(otel: Telemetry) -> Iterator[None]:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.mark.usefixtures("aiohttp_instrumented")
async def test_the_span_nests_under_the_caller_and_above_aiohttps_client_spans(
    otel: Telemetry, provider: MockProvider
) -> None:
    provider.script("5xx")
    tracer = otel.tracer_provider.get_tracer("the-queue")
    # The engine's aiohttp session is made at start, after the instrumentation is on.
    async with engine(provider.emails_url, otel.hook(), retry=RetryPolicy(backoff=0.001)) as e:
        with tracer.start_as_current_span("process welcome", kind=SpanKind.CONSUMER) as task:
            await e.send(job(), BODY)
            assert trace.get_current_span() is task  # the send's span is no longer current
    [send] = otel.sends()
    clients = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert send.parent is not None and send.parent.span_id == task.get_span_context().span_id
    assert send.context is not None and send.context.trace_id == task.get_span_context().trace_id
    assert len(clients) == 2  # one CLIENT span per HTTP try, each a child of the send
    assert all(c.parent is not None and c.parent.span_id == send.context.span_id for c in clients)
    # the stable attribute, or the old one (the instrumentation's default until it switches)
    statuses = {str((c.attributes or {}).get("http.response.status_code", (c.attributes or {}).get("http.status_code")))
                for c in clients}
    assert statuses == {"200", "503"}
    assert_no_credentials(otel, [])


async def test_without_a_caller_span_the_send_is_a_root_span(otel: Telemetry, provider: MockProvider) -> None:
    async with engine(provider.emails_url, otel.hook()) as e:
        await e.send(job(), BODY)
    [span] = otel.sends()
    assert span.parent is None


# -- a real queue worker -----------------------------------------------------------------------


# arq 0.28's Worker.close() calls redis-py's deprecated close()
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_through_a_real_arq_worker(otel: Telemetry, provider: MockProvider, redis_url: str) -> None:
    pytest.importorskip("arq", reason="arq is not installed")
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    from idemsend.adapters.arq import ArqAdapter

    hook = otel.hook()
    adapter = ArqAdapter(lambda: engine(provider.emails_url, hook, retry=0), max_tries=3, retry_base=0.05)
    tracer = otel.tracer_provider.get_tracer("arq-task")  # arq has no OpenTelemetry instrumentation of its own

    async def send_welcome(ctx: dict[str, Any], user_id: str, email: str) -> dict[str, Any]:
        with tracer.start_as_current_span("arq send_welcome", kind=SpanKind.CONSUMER):
            return await adapter.send(ctx, {"user_id": user_id}, {"to": [email], "template": "welcome"})

    queue = f"idemsend-otel-{uuid.uuid4().hex[:8]}"
    settings = RedisSettings.from_dsn(redis_url)
    pool = await create_pool(settings, default_queue_name=queue)
    provider.script("5xx")  # the first try fails: arq runs the job again
    await pool.enqueue_job("send_welcome", "u1", "ada@example.com", _job_id="job-1")
    worker = Worker(
        functions=[func(send_welcome, name="send_welcome")], redis_pool=pool, queue_name=queue, burst=True,
        poll_delay=0.02, on_startup=adapter.on_startup, on_shutdown=adapter.on_shutdown, max_tries=3,
        handle_signals=False,
    )
    try:
        await asyncio.wait_for(worker.async_run(), 30)
        assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (1, 1, 0)
    finally:
        await worker.close()
    assert provider.sends == 1
    tasks = otel.spans("arq send_welcome")
    sends = otel.sends()
    assert len(tasks) == 2 and len(sends) == 2
    for task, send in zip(tasks, sends, strict=True):
        assert send.parent is not None and send.parent.span_id == task.context.span_id
    first, second = (dict(s.attributes or {}) for s in sends)
    assert (first["idemsend.queue"], first["idemsend.attempt"], first["idemsend.outcome"]) == ("arq", 1, "retryable")
    assert (second["idemsend.queue"], second["idemsend.attempt"], second["idemsend.outcome"]) == ("arq", 2, "sent")
    assert first["idemsend.key_hash"] == second["idemsend.key_hash"] == short_hash(key_of())
    assert otel.value("idemsend.sends", idemsend__queue="arq", idemsend__outcome="retryable", error__type="5xx") == 1
    assert otel.value("idemsend.sends", idemsend__queue="arq", idemsend__outcome="sent") == 1
    assert otel.value("idemsend.send.active", idemsend__queue="arq") == 0
    assert_no_credentials(otel, [])


# -- no credential anywhere --------------------------------------------------------------------


class EchoingProvider(MockProvider):
    """Echoes the Authorization header back in every JSON answer (body, error message) and in
    a response header: what a careless provider, or a debugging proxy, does."""

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def echo(request: web.Request, handler: Any) -> web.StreamResponse:
            response: web.StreamResponse = await handler(request)
            auth = request.headers.get("Authorization", "")
            if not isinstance(response, web.Response) or response.content_type != "application/json":
                return response
            assert isinstance(response.body, bytes)
            data = json.loads(response.body)
            if isinstance(data, dict):
                data["echo"] = auth
                error = data.get("error")
                if isinstance(error, dict):
                    error["message"] = f"{error.get('message')} (you sent {auth})"
            headers = {k: v for k, v in response.headers.items() if k.lower() not in {"content-type", "content-length"}}
            return web.json_response(data, status=response.status, headers={**headers, "X-Echo": auth})

        app.middlewares.append(echo)
        return app


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str | bytes):
        yield value if isinstance(value, str) else value.decode("utf-8", "replace")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _texts(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _texts(v)
    elif value is not None:
        yield str(value)


def telemetry_texts(otel: Telemetry) -> list[str]:
    """Every text of every span (attributes, name, status, events, links, resource) and of
    every metric point's attributes."""
    texts: list[str] = []
    for span in otel.spans():
        texts += _texts(dict(span.attributes or {}))
        texts += _texts(span.name)
        texts += _texts(span.status.description)
        for event in span.events:
            texts += _texts([event.name, dict(event.attributes or {})])
        for link in span.links:
            texts += _texts(dict(link.attributes or {}))
        texts += _texts(dict(span.resource.attributes))
    for points in otel.metrics().values():
        for attrs, _ in points:
            texts += _texts(attrs)
    return texts


def assert_nowhere(otel: Telemetry, *secrets: str) -> int:
    """None of ``secrets`` is in any span or metric text; returns how many texts were checked."""
    texts = telemetry_texts(otel)
    leaks = [(secret, t) for t in texts for secret in secrets if secret in t]
    assert not leaks, leaks[:5]
    return len(texts)


def assert_no_credentials(otel: Telemetry, records: list[logging.LogRecord]) -> int:
    """No span attribute, event, status or link, no metric attribute and no log record holds
    the API key. Returns how many texts were checked."""
    texts = telemetry_texts(otel)
    for record in records:
        texts += _texts(record.getMessage())
        texts += _texts({k: v for k, v in vars(record).items() if k not in {"msg", "args"}})
        if record.exc_info and record.exc_info[1] is not None:
            texts += _texts(str(record.exc_info[1]))
    secret = API_KEY[8:]  # any part that identifies it
    leaks = [t for t in texts if API_KEY in t or secret in t]
    assert not leaks, leaks[:5]
    return len(texts)


@pytest.mark.parametrize("record_key", [False, True])
@pytest.mark.usefixtures("aiohttp_instrumented")
async def test_no_credential_reaches_a_span_a_metric_or_a_log(
    otel: Telemetry, record_key: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with EchoingProvider(api_key=API_KEY) as provider:
        e = engine(provider.emails_url, otel.hook(record_key=record_key), ledger=MemoryLedger(), retry=0,
                   in_flight=InFlightWait(delay=0.01, budget=0.02))
        async with e:
            sent = await e.send(job(1), BODY, queue="arq", attempt=1)  # sent (the body echoes the key back)
            await e.send(job(1), BODY)  # from the ledger
            provider.script("5xx")
            with pytest.raises(RetryableError):
                await e.send(job(2), BODY)
            provider.script("in_flight", "in_flight", "in_flight", "in_flight", "in_flight")
            with pytest.raises(RetryableError):
                await e.send(job(3), BODY)
            with pytest.raises(FatalError) as invalid:  # a 422 whose message quotes the Authorization header
                await e.send(job(4), [1, 2, 3])
        async with engine(provider.emails_url, otel.hook(record_key=record_key)) as other:  # no ledger
            with pytest.raises(MismatchError):
                await other.send(job(1), {"other": "body"})
    assert "you sent" in str(invalid.value)  # the provider did echo it: the engine redacted it
    assert sent.response is not None and API_KEY not in json.dumps(sent.response)
    outcomes = sorted(str((s.attributes or {})["idemsend.outcome"]) for s in otel.sends())
    assert outcomes == ["fatal", "fatal", "from_ledger", "retryable", "retryable", "sent"]
    checked = assert_no_credentials(otel, caplog.records)
    assert checked > 100 and any(r.name.startswith("idemsend") for r in caplog.records)
    # the request body is never recorded; the raw key only when asked for
    assert_nowhere(otel, "ada@example.com", *([] if record_key else [key_of(n) for n in range(1, 5)]))
    if record_key:
        assert key_of(1) in telemetry_texts(otel)  # the check above would have seen it


async def test_the_prometheus_exposition_has_the_documented_names_and_no_key(provider: MockProvider) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus", reason="the Prometheus exporter is not installed")
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    meter_provider = MeterProvider(metric_readers=[reader])
    hook = OpenTelemetryHook(trace.NoOpTracerProvider(), meter_provider)
    provider.script("5xx")
    try:
        async with engine(provider.emails_url, hook, ledger=MemoryLedger(), retry=RetryPolicy(backoff=0.001)) as e:
            await e.send(job(), BODY, queue="arq")
        text = generate_latest(registry).decode()
    finally:
        meter_provider.shutdown()
    for name in (
        "idemsend_sends_total", "idemsend_send_duration_seconds_bucket", "idemsend_send_active",
        "idemsend_provider_requests_total", "idemsend_provider_retries_total", "idemsend_send_waits_total",
        "idemsend_ledger_operation_duration_seconds_bucket",
    ):
        assert re.search(rf"^{name}\{{", text, re.M), name
    assert 'idemsend_outcome="sent"' in text and 'idemsend_http_status_class="5xx"' in text
    assert 'le="0.001"' in text and 'le="30.0"' in text
    assert key_of() not in text and "job-1" not in text and API_KEY not in text


# -- cost and safety ---------------------------------------------------------------------------


async def test_labels_stay_bounded_whatever_the_provider_answers(otel: Telemetry) -> None:
    codes = iter(range(1000))

    def handler(request: TransportRequest) -> RawResponse:
        n = next(codes)
        code = f"CODE_{n}" if n % 2 else f"free text {n} with spaces"
        return RawResponse(400, {}, json.dumps({"error": {"code": code, "message": "no"}}).encode())

    url = "https://api.example.com/api/v1/emails"
    async with engine(url, otel.hook(), transport=MockTransport(handler)) as e:
        for n in range(200):
            with pytest.raises(FatalError):
                await e.send(job(n), BODY, queue=f"queue-{n}")
    error_types = {attrs.get("error.type") for attrs, _ in otel.metrics()["idemsend.sends"]}
    queues = {attrs.get("idemsend.queue") for attrs, _ in otel.metrics()["idemsend.sends"]}
    assert "_OTHER" in error_types and len(error_types) <= 65
    assert not any(" " in str(t) for t in error_types)
    assert "_OTHER" in queues and len(queues) <= 17


async def test_a_transport_error_is_one_word_not_its_message(otel: Telemetry) -> None:
    def handler(request: TransportRequest) -> RawResponse:
        raise TransportError("connection reset by peer 10.1.2.3:443 after 1234 bytes", kind="network")

    async with engine("https://api.example.com/api/v1/emails", otel.hook(), transport=MockTransport(handler),
                      retry=0) as e:
        with pytest.raises(RetryableError):
            await e.send(job(), BODY)
    [span] = otel.sends()
    assert span.attributes is not None and span.attributes["error.type"] == "transport"
    assert "http.response.status_code" not in span.attributes
    assert span.attributes["idemsend.maybe_sent"] is True  # a reset: it may have reached the provider
    assert otel.value("idemsend.provider.requests", idemsend__http__status_class="error") == 1


async def test_a_refused_connection_says_nothing_was_sent(otel: Telemetry) -> None:
    def handler(request: TransportRequest) -> RawResponse:
        raise TransportError("connection refused", kind="connect")

    async with engine("https://api.example.com/api/v1/emails", otel.hook(), transport=MockTransport(handler),
                      retry=0) as e:
        with pytest.raises(RetryableError) as raised:
            await e.send(job(), BODY, attempt=1)  # the queue's first delivery: nothing earlier sent it
    assert raised.value.maybe_sent is False
    [span] = otel.sends()
    assert span.attributes is not None and span.attributes["idemsend.maybe_sent"] is False


async def test_a_cancelled_send_is_counted_and_ends_its_span(otel: Telemetry, provider: MockProvider) -> None:
    provider.processing_delay = 2
    async with engine(provider.emails_url, otel.hook()) as e:
        task = asyncio.ensure_future(e.send(job(), BODY))
        for _ in range(500):  # cancelled once its request is at the provider (the send is under way)
            if key_of() in provider.arrivals:
                break
            await asyncio.sleep(0.01)
        assert key_of() in provider.arrivals and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    [span] = otel.sends()
    assert span.attributes is not None and span.attributes["idemsend.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET and "error.type" not in span.attributes
    assert otel.value("idemsend.sends", idemsend__outcome="cancelled") == 1
    assert otel.value("idemsend.send.active") == 0


class _BrokenTracer(trace.NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        raise RuntimeError("the tracer is broken")


class _BrokenProvider(trace.TracerProvider):
    """A tracer provider (not a no-op one) whose tracer fails."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _BrokenTracer()


async def test_a_broken_tracer_never_breaks_a_send(otel: Telemetry, provider: MockProvider) -> None:
    hook = OpenTelemetryHook(_BrokenProvider(), otel.meter_provider)
    async with engine(provider.emails_url, hook) as e:
        result = await e.send(job(), BODY)
    assert result.id is not None
    assert otel.value("idemsend.sends", idemsend__outcome="sent") == 1


class _RaisingProcessor(SpanProcessor):
    """A span processor that fails in ``on_start`` or ``on_end``, as a buggy vendor processor
    does (the SDK does not catch what they raise)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.where == "on_start":
            raise RuntimeError("on_start is broken")

    def on_end(self, span: Any) -> None:
        if self.where == "on_end":
            raise RuntimeError("on_end is broken")


class _RaisingExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        raise RuntimeError("the exporter is broken")


class _RaisingInstrument:
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the instrument is broken")

    record = add


class _RaisingMeter(metrics.NoOpMeter):
    def create_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _RaisingInstrument()

    create_up_down_counter = create_histogram = create_counter


class _RaisingMeterProvider(metrics.NoOpMeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> metrics.Meter:
        return _RaisingMeter("broken")


@pytest.mark.parametrize("broken", ["on_start", "on_end", "exporter", "instruments", "all"])
async def test_a_broken_sdk_never_loses_nor_doubles_a_send(provider: MockProvider, broken: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer_provider = TracerProvider()
    if broken in ("on_start", "on_end"):
        tracer_provider.add_span_processor(_RaisingProcessor(broken))
    if broken == "all":
        tracer_provider.add_span_processor(_RaisingProcessor("on_start"))
        tracer_provider.add_span_processor(_RaisingProcessor("on_end"))
    if broken in ("exporter", "all"):
        tracer_provider.add_span_processor(SimpleSpanProcessor(_RaisingExporter()))
    meter_provider = _RaisingMeterProvider() if broken in ("instruments", "all") else metrics.NoOpMeterProvider()
    hook = OpenTelemetryHook(tracer_provider, meter_provider)
    with contextlib.ExitStack() as quiet:
        quiet.enter_context(pytest.MonkeyPatch.context()).setattr(
            logging.getLogger("opentelemetry"), "disabled", True)  # SimpleSpanProcessor logs the exporter's error
        async with engine(provider.emails_url, hook, ledger=MemoryLedger(),
                          retry=RetryPolicy(retries=1, backoff=0.001)) as e:
            provider.script("5xx")  # a retry inside the send: on_try and on_wait run too
            sent = await e.send(job(1), BODY, queue="arq")
            again = await e.send(job(1), BODY)  # a redelivery: the ledger answers, no second request
            provider.script("5xx", "5xx")
            with pytest.raises(RetryableError):  # the engine's own error, not the SDK's
                await e.send(job(2), BODY)
        async with engine(provider.emails_url, hook) as other:  # no ledger: the provider answers
            with pytest.raises(MismatchError):
                await other.send(job(1), {"other": "body"})
    tracer_provider.shutdown()
    assert sent.id is not None and not sent.replayed and not sent.from_ledger
    assert again.from_ledger and again.id == sent.id
    assert provider.sends == 1 and provider.sends_for(key_of(1)) == 1 and provider.stats.requests == 5


async def test_a_scope_the_hook_cannot_open_leaves_the_send_alone(
    otel: Telemetry, provider: MockProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = otel.hook()

    def broken(*args: Any) -> Any:
        raise RuntimeError("the labels are broken")

    monkeypatch.setattr(hook, "_new_labels", broken)
    async with engine(provider.emails_url, hook) as e:
        result = await e.send(job(), BODY, queue="arq")
    assert result.id is not None and provider.sends == 1
    assert otel.sends() == [] and otel.value("idemsend.sends") == 0  # unrecorded, not broken


async def test_a_key_the_provider_quotes_its_own_way_is_hashed_in_the_description(otel: Telemetry) -> None:
    key = key_of()

    def handler(request: TransportRequest) -> RawResponse:
        message = f'the key "{key}" is malformed; {key} was rejected; see job "job-1"'
        return RawResponse(422, {}, json.dumps({"error": {"code": "BAD_KEY", "message": message}}).encode())

    async with engine("https://api.example.com/api/v1/emails", otel.hook(), transport=MockTransport(handler)) as e:
        with pytest.raises(FatalError):
            await e.send(job(), BODY)
    [span] = otel.sends()
    description = span.status.description or ""
    assert description.count(f"<key {short_hash(key)}>") == 2 and f"<job {short_hash('job-1')}>" in description
    assert "malformed" in description
    assert_nowhere(otel, key, '"job-1"')


async def test_a_foreign_exception_is_described_by_its_type_only(otel: Telemetry) -> None:
    def handler(request: TransportRequest) -> RawResponse:
        raise ValueError(f"cannot send {request.body!r} with key {request.headers}")  # a bug, not an idemsend error

    async with engine("https://api.example.com/api/v1/emails", otel.hook(), transport=MockTransport(handler)) as e:
        with pytest.raises(ValueError):
            await e.send(job(), BODY)
    [span] = otel.sends()
    assert span.attributes is not None
    assert span.attributes["idemsend.outcome"] == "error" and span.attributes["error.type"] == "ValueError"
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "ValueError"
    assert otel.value("idemsend.sends", idemsend__outcome="error", error__type="ValueError") == 1
    assert otel.value("idemsend.send.active") == 0
    assert_nowhere(otel, "ada@example.com", API_KEY, key_of())


def test_ledger_batches_are_a_histogram(otel: Telemetry) -> None:
    hook = otel.hook()
    for size in (1, 7, 300):
        hook.record_ledger_batch(size)
    [(attrs, point)] = otel.metrics()["idemsend.ledger.batch.size"]
    assert attrs == {} and point.count == 3 and point.sum == 308
    assert otel.units()["idemsend.ledger.batch.size"] == "{operation}"


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_without_an_sdk_no_span_is_started_and_a_provider_set_later_is_picked_up() -> None:
    # In a fresh process: the global providers can be set only once.
    stdout = _run("""
import asyncio, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from idemsend import Engine, Job
from idemsend.contrib.otel import OpenTelemetryHook
from idemsend.testing import MockProvider

started = []
real_start = trace.ProxyTracer.start_span
def counting(self, *a, **k):
    started.append(1)
    return real_start(self, *a, **k)
trace.ProxyTracer.start_span = counting

async def main():
    hook = OpenTelemetryHook()
    async with MockProvider() as p, Engine(p.emails_url, key="k:{job_id}", api_key="test-api-key", hooks=[hook]) as e:
        for n in range(50):
            await e.send(Job(f"j{n}", {}), {"n": n})
        print("no sdk: spans started", len(started))
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        await asyncio.sleep(1.1)
        await e.send(Job("late", {}), {"n": 0})
        print("after set:", [s.name for s in exporter.get_finished_spans()])
asyncio.run(main())
""")
    assert "no sdk: spans started 0" in stdout
    assert "after set: ['idemsend.send']" in stdout


# -- the public front and the docs -------------------------------------------------------------


def test_the_hook_is_a_hook_and_its_scope_an_observer() -> None:
    hook = OpenTelemetryHook()
    assert isinstance(hook, Hook)
    info = SendInfo("k", "j", None, None, "api.example.com", None, "https://api.example.com/x")
    with hook.send_scope(info) as observer:
        assert isinstance(observer, SendObserver)


def test_all_is_sorted_and_every_public_name_has_a_docstring() -> None:
    names = list(otel_module.__all__)
    assert names == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    assert (otel_module.__doc__ or "").strip() and (importlib.import_module("idemsend.contrib").__doc__ or "").strip()
    for name in names:
        obj = getattr(otel_module, name)
        if inspect.isclass(obj):
            assert inspect.getdoc(obj), name
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(member):
                    assert inspect.getdoc(member), f"{name}.{attr}"


async def test_the_docs_name_every_span_attribute_event_and_metric(otel: Telemetry, provider: MockProvider) -> None:
    docs = (ROOT / "docs" / "observability.md").read_text()
    provider.script("5xx", "in_flight")
    hook = otel.hook(record_key=True)
    async with engine(provider.emails_url, hook, ledger=MemoryLedger(), retry=RetryPolicy(backoff=0.001),
                      in_flight=InFlightWait(delay=0.01)) as e:
        await e.send(job(), BODY, queue="arq", attempt=1)  # a retry, a wait, ledger calls
        await e.send(job(), BODY)  # from the ledger
        await asyncio.gather(e.send(job(2), BODY), e.send(job(2), BODY))  # single flight
    async with engine(provider.emails_url, hook) as other:
        await other.send(job(2), BODY)  # the provider replays it
        with pytest.raises(MismatchError):
            await other.send(job(), {"other": "body"})
    hook.record_ledger_batch(3)
    names: set[str] = set()
    for span in otel.sends():
        names |= {span.name, *(span.attributes or {})}
        for event in span.events:
            names |= {event.name, *(event.attributes or {})}
    for metric, points in otel.metrics().items():
        names.add(metric)
        for attrs, _ in points:
            names |= set(attrs)
    missing = sorted(n for n in names if f"`{n}`" not in docs)
    assert not missing, missing
