"""Ways a send could be lost, doubled, stalled or leak a credential, tried from outside the
engine's own fault model: a misbehaving provider, hostile numbers, a skewed clock, a
forgetful ledger. Each test failed on the code before the hardening issue (issue 8)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from idemsend import (
    ConfigError,
    Engine,
    FatalError,
    InFlightWait,
    InvalidBodyError,
    Job,
    Limits,
    MismatchError,
    Provider,
    RetryableError,
    RetryPolicy,
    SendResult,
    SetupError,
    StaleReplayError,
)
from idemsend.adapters import QueueBackoff, whole_seconds
from idemsend.classify import MAX_RETRY_AFTER
from idemsend.ledger import MemoryLedger, RedisLedger
from idemsend.testing import MockProvider, RedisServer
from idemsend.testing._redis_server import free_port

from ..ledger._redis_backdate import backdate_key

pytestmark = pytest.mark.anyio

KEY = "welcome:{user_id}:{job_id}"
URL = "http://127.0.0.1:1/x"
BODY = {"to": ["ada@example.com"], "template": "welcome"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def job(n: int | str = 1) -> Job:
    return Job(f"job-{n}", {"user_id": "u1"})


class FakeProvider:
    """A tiny real HTTP server whose answer each test scripts: the provider misbehaving."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.answer: Handler = self._ok
        self._runner: web.AppRunner | None = None
        self._ids = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/emails"

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        self._ids += 1
        return web.json_response({"id": f"em_{self._ids}"})

    async def _route(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, await request.read(), dict(request.headers)))
        return await self.answer(request)

    def count(self, method: str = "POST", path: str = "/api/v1/emails") -> int:
        return sum(1 for m, p, _, _ in self.requests if m == method and p == path)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._route)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    p = FakeProvider()
    await p.start()
    try:
        yield p
    finally:
        await p.aclose()


def answer(status: int, body: Any = None, *, headers: dict[str, str] | None = None, text: str | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if text is not None:
            return web.Response(status=status, text=text, headers=headers, content_type="text/html")
        return web.json_response(body, status=status, headers=headers)

    return handler


# -- 1. redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_never_recorded(provider: FakeProvider, status: int) -> None:
    async def redirect_or_list(request: web.Request) -> web.StreamResponse:
        if request.path == "/api/v1/emails":
            location = f"http://127.0.0.1:{provider.port}/v2/emails?token=sekrit-token-1234"
            return web.Response(status=status, headers={"Location": location})
        return web.json_response({"data": []})  # a list endpoint: 200 to a GET

    provider.answer = redirect_or_list
    ledger = MemoryLedger()
    async with Engine(provider.url, key=KEY, api_key="k-123456", ledger=ledger) as e:
        with pytest.raises(SetupError) as info:
            await e.send(job(), BODY)
    text = str(info.value)
    assert "/v2/emails" in text and str(status) in text
    assert "sekrit-token-1234" not in text
    assert [(m, p) for m, p, _, _ in provider.requests] == [("POST", "/api/v1/emails")]
    # a setup error is not the job's fate: no fatal record. The claim stays as an unknown
    # outcome (a 303 See Other is how some APIs answer a POST they ran), so a retry once
    # the URL is fixed resends the same frozen body with the same key.
    record = await ledger.get("welcome:u1:job-1")
    assert record is not None and record.state == "in_flight" and not record.lease_until


# -- 2. a 2xx that confirms nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [answer(200, text="<html>proxy says hello</html>"), answer(200, None), answer(200, {}), answer(202, {"id": None})],
    ids=["html", "empty", "no id", "null id"],
)
async def test_a_2xx_without_an_id_is_retried_not_recorded(provider: FakeProvider, bad: Handler) -> None:
    provider.answer = bad
    ledger = MemoryLedger()
    retry = RetryPolicy(retries=1, backoff=0.01)
    async with Engine(provider.url, key=KEY, api_key="k-123456", ledger=ledger, retry=retry) as e:
        with pytest.raises(RetryableError):
            await e.send(job(), BODY)
        record = await ledger.get("welcome:u1:job-1")
        assert record is not None and record.state == "in_flight"  # unknown outcome, kept
        provider.answer = provider._ok
        result = await e.send(job(), BODY)
    assert result.id is not None and not result.from_ledger


# -- 3. a setup error is not the job's fate ---------------------------------------------------


async def test_a_stale_api_key_is_not_recorded_and_the_job_runs_once_fixed(redis_url: str) -> None:
    prefix = f"h-{uuid.uuid4().hex[:8]}"
    async with MockProvider(api_key="the-right-key") as p:
        stale = RedisLedger.from_url(redis_url, prefix=prefix)
        async with Engine(p.emails_url, key=KEY, api_key="stale-key", ledger=stale) as e:
            with pytest.raises(SetupError) as info:
                await e.send(job(), BODY)
            assert info.value.code == "UNAUTHORIZED"
            assert await stale.get("welcome:u1:job-1") is None
        fixed = RedisLedger.from_url(redis_url, prefix=prefix)
        async with Engine(p.emails_url, key=KEY, api_key="the-right-key", ledger=fixed) as e:
            result = await e.send(job(), BODY)
    assert result.id is not None and p.sends == 1


async def test_a_recorded_fatal_reads_the_same_when_replayed_and_can_be_cleared(
    provider: FakeProvider, redis_url: str
) -> None:
    provider.answer = answer(422, {"error": {"code": "VALIDATION_ERROR", "message": "to is not an address"}})
    prefix = f"h-{uuid.uuid4().hex[:8]}"

    def engine() -> Engine:
        return Engine(provider.url, key=KEY, api_key="k-123456", ledger=RedisLedger.from_url(redis_url, prefix=prefix))

    async with engine() as e:
        with pytest.raises(FatalError) as first:
            await e.send(job(), BODY)
        with pytest.raises(FatalError) as replayed:
            await e.send(job(), BODY)
    assert provider.count() == 1
    assert first.value.code == replayed.value.code == "VALIDATION_ERROR"
    text = str(replayed.value)
    assert text.count("VALIDATION_ERROR") == 1 and text.count("welcome:u1:job-1") == 1, text
    assert "to is not an address" in text and "recorded in the ledger" in text

    from idemsend.cli import main

    # a fatal record is cleared on purpose (the CLI runs its own event loop: a thread);
    # a done record is never cleared
    provider.answer = provider._ok
    clear = ["clear", "welcome:u1:job-1", "--redis", redis_url, "--prefix", prefix]
    assert await asyncio.to_thread(main, clear) == 0
    async with engine() as e:
        result = await e.send(job(), BODY)
        assert result.id is not None
    assert await asyncio.to_thread(main, clear) == 1
    assert provider.count() == 2


# -- 4. clock skew ---------------------------------------------------------------------------


async def test_a_worker_clock_hours_behind_does_not_resend_a_stale_unknown_outcome(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"h-{uuid.uuid4().hex[:8]}"
    ledger = RedisLedger.from_url(redis_url, prefix=prefix)
    key = "welcome:u1:job-1"
    # An earlier attempt claimed the key 23.5 h ago (by Redis's clock) and died mid-send.
    claim = await ledger.claim(
        key=key, job_id="job-1", payload=b'{"a":1}', fingerprint="f" * 64, token="dead-worker", lease=0.1
    )
    assert claim.__class__.__name__ == "Claimed"
    assert await backdate_key(ledger, key, 23.5 * 3600, end_lease=True)
    # This worker's clock runs 2 h behind: by its own clock the first send is 21.5 h old.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 2 * 3600)
    async with MockProvider() as p, Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=ledger) as e:
        with pytest.raises(StaleReplayError):
            await e.send(Job("job-1", {"user_id": "u1"}), {"a": 1})
        assert p.stats.requests == 0


# -- 8. a failure the provider stored for the key -----------------------------------------------


async def test_a_replayed_500_is_final_and_not_retried(provider: FakeProvider) -> None:
    provider.answer = answer(
        500, {"error": {"type": "api_error", "message": "boom"}}, headers={"Idempotent-Replayed": "true"}
    )
    ledger = MemoryLedger()
    stripe = Provider.stripe()
    async with Engine(provider.url, key=KEY, api_key="k-123456", provider=stripe, ledger=ledger, retry=3) as e:
        with pytest.raises(FatalError) as info:
            await e.send(job(), BODY)
    assert not isinstance(info.value, SetupError)
    assert provider.count() == 1
    record = await ledger.get("welcome:u1:job-1")
    assert record is not None and record.state == "fatal"


# -- 9. single-flight with a ledger ------------------------------------------------------------


async def test_an_overlapping_duplicate_with_a_drifted_body_gets_what_a_later_one_gets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "idemsend")
    async with MockProvider(processing_delay=0.2) as p:
        async with Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=MemoryLedger()) as e:
            first = asyncio.ensure_future(e.send(job(), BODY))
            await asyncio.sleep(0.05)
            overlapping = await e.send(job(), {**BODY, "name": "renamed"})
            later = await e.send(job(), {**BODY, "name": "renamed again"})
            sent = await first
        async with Engine(p.emails_url, key=KEY, api_key=p.api_key) as plain:
            # without a ledger the provider decides: a different body is a mismatch
            blocker = asyncio.ensure_future(plain.send(job(2), BODY))
            await asyncio.sleep(0.05)
            with pytest.raises(MismatchError):
                await plain.send(job(2), {**BODY, "name": "renamed"})
            await blocker
    assert overlapping.id == later.id == sent.id and p.sends_for("welcome:u1:job-1") == 1
    drift = [r.getMessage() for r in caplog.records if "body changed" in r.getMessage()]
    assert len(drift) == 2, drift  # one for the joiner, one for the answer from the done record
    assert all(sent.fingerprint[:16] in line for line in drift)


# -- 10. hostile Retry-After -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Infinity", "nan", "1e308", "-5"])
async def test_a_hostile_retry_after_is_finite_and_stalls_nothing(provider: FakeProvider, value: str) -> None:
    provider.answer = answer(429, {"error": {"code": "RATE_LIMITED"}}, headers={"Retry-After": value})
    async with Engine(provider.url, key=KEY, api_key="k-123456", limits=Limits(rate=100), retry=0) as e:
        with pytest.raises(RetryableError) as info:
            await e.send(job(1), BODY)
        after = info.value.retry_after
        assert after is None or (math.isfinite(after) and 0 <= after <= MAX_RETRY_AFTER)
        # another key of the engine is not paused forever: it is sent, or goes back to
        # its queue at once with a finite delay
        provider.answer = provider._ok
        start = time.monotonic()
        try:
            await asyncio.wait_for(e.send(job(2), BODY), 10)
        except RetryableError as exc:
            assert exc.retry_after is not None and math.isfinite(exc.retry_after)
        assert time.monotonic() - start < 6
    for delay in (math.inf, math.nan, 1e308):
        assert 0 <= whole_seconds(delay) <= MAX_RETRY_AFTER
        assert 0 <= QueueBackoff().delay(RetryableError("x", retry_after=delay), 3) <= MAX_RETRY_AFTER
    assert QueueBackoff().delay(RetryableError("x"), 10_000) <= 300 * 1.25


# -- 11. timing knobs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: InFlightWait(delay=0), "in_flight delay"),
        (lambda: InFlightWait(delay=-1), "in_flight delay"),
        (lambda: InFlightWait(budget=math.inf), "in_flight budget"),
        (lambda: Engine(URL, key=KEY, timeout=math.inf), "timeout"),
        (lambda: Engine(URL, key=KEY, timeout=math.nan), "timeout"),
        (lambda: Engine(URL, key=KEY, lease=0), "lease"),
        (lambda: RetryPolicy(backoff=-0.1), "backoff"),
        (lambda: RetryPolicy(backoff=1.0, max_backoff=0.5), "max_backoff"),
        (lambda: RetryPolicy(retries=1.5), "retries"),  # type: ignore[arg-type]
        (lambda: RetryPolicy(retries=True), "retries"),
        (lambda: RetryPolicy(max_inline_delay=-1), "max_inline_delay"),
        (lambda: Limits(max_in_flight="10"), "max_in_flight"),  # type: ignore[arg-type]
        (lambda: Limits(rate=0), "rate"),
        (lambda: Limits(rate=math.nan), "rate"),
        (lambda: Provider(window=3600, stale_margin=3600), "stale_margin"),
        (lambda: Provider(idempotency_header="Idempotency Key"), "idempotency_header"),
        (lambda: Engine(URL, key=KEY, headers={"X-A": "a\r\nX-Injected: 1"}), "single-line"),
    ],
)
def test_every_timing_knob_is_validated(make: Callable[[], object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        make()


# -- 12. deep input ---------------------------------------------------------------------------


async def test_deep_bodies_and_deep_responses_are_clear_errors(provider: FakeProvider) -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"a": deep}
    provider.answer = answer(200, text="[" * 100_000)
    async with Engine(provider.url, key=KEY, api_key="k-123456", retry=0) as e:
        with pytest.raises(InvalidBodyError, match="nested too deeply"):
            await e.send(job(1), deep)
        assert provider.count() == 0
        with pytest.raises(RetryableError):  # an unreadable 200 confirms nothing
            await e.send(job(2), BODY)


# -- 13. credentials ---------------------------------------------------------------------------


async def test_no_credential_in_any_log_error_repr_result_or_ledger_record(
    provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    api_key, token, url_secret = "sk_live_SECRET_4242", "pm-server-token-9999", "query-secret-7777"

    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        server_token = request.headers.get("X-Postmark-Server-Token", "")
        if "fail" in request.headers.get("Idempotency-Key", ""):
            return web.json_response(
                {"error": {"code": "BAD", "message": f"rejected {auth} / {server_token}"}}, status=400
            )
        echoed = {"auth": auth, "token": server_token, "slashed": auth.replace("/", "\\/")}
        return web.json_response({"id": "em_1", "echo": echoed})

    provider.answer = echo
    caplog.set_level(logging.DEBUG)
    ledger = MemoryLedger()
    url = provider.url + f"?api_token={url_secret}"
    e = Engine(
        url, key="{kind}:{job_id}", api_key=api_key, headers={"X-Postmark-Server-Token": token}, ledger=ledger,
    )
    texts = [repr(e)]
    async with e:
        ok = await e.send(Job("j1", {"kind": "ok"}), BODY)
        texts += [repr(ok), json.dumps(ok.response)]
        with pytest.raises(FatalError) as bad:
            await e.send(Job("j2", {"kind": "fail"}), BODY)
        texts += [str(bad.value), repr(bad.value)]
        for key in ("ok:j1", "fail:j2"):
            texts.append(repr(await ledger.get(key)))
    # a password in the URL (aiohttp sends it as Basic auth) stays out of reprs and errors
    async with Engine(f"http://user:{url_secret}@127.0.0.1:1/x", key=KEY, retry=0) as dead:
        texts.append(repr(dead))
        with pytest.raises(RetryableError) as refused:
            await dead.send(job(), BODY)
        texts += [str(refused.value), repr(refused.value)]
    texts += [r.getMessage() for r in caplog.records]
    assert any("[redacted]" in t for t in texts)
    leaked = [t for t in texts for s in (api_key, token, url_secret) if s in t]
    assert not leaked, leaked


# -- 14. a ledger outage backs off -------------------------------------------------------------


async def test_a_ledger_outage_leaves_the_delay_to_the_queue_backoff() -> None:
    server = RedisServer().start()
    ledger = RedisLedger.from_url(server.url, socket_timeout=1.0)
    try:
        async with MockProvider() as p, Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=ledger) as e:
            server.stop()
            with pytest.raises(RetryableError) as info:
                await e.send(job(), BODY)
            assert info.value.reason == "ledger" and info.value.retry_after is None
            assert p.stats.requests == 0
    finally:
        server.cleanup()
    delays = [QueueBackoff().delay(info.value, attempt) for attempt in range(1, 10)]
    assert delays == sorted(delays) or max(delays) >= 256  # grows (up to 25% jitter on top)
    assert sum(delays) >= QueueBackoff().span(10) >= 300  # ten tries ride out five minutes



@pytest.mark.parametrize(("attempt", "maybe_sent"), [(1, False), (2, True), (None, True)])
async def test_a_ledger_down_since_start_says_maybe_sent_only_when_an_earlier_delivery_may_have(
    attempt: int | None, maybe_sent: bool
) -> None:
    # The ledger could not be checked at start, so the first send checks it again and finds
    # it still down: nothing was sent by this call, and on the queue's first delivery nothing
    # was sent at all (it said "may have been sent" here before).
    ledger = RedisLedger.from_url(f"redis://127.0.0.1:{free_port()}", socket_timeout=1.0)
    async with MockProvider() as p, Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=ledger) as e:
        with pytest.raises(RetryableError) as info:
            await e.send(job(), BODY, attempt=attempt)
        assert p.stats.requests == 0
    assert info.value.reason == "ledger" and info.value.maybe_sent is maybe_sent
    assert ("an earlier call or delivery may have sent it" in str(info.value)) is maybe_sent

# -- 7. a ledger that forgets mid-send -----------------------------------------------------------


async def test_a_record_lost_mid_send_is_recorded_again_and_logged_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis.asyncio as aioredis

    caplog.set_level(logging.WARNING, "idemsend")
    with RedisServer() as server:
        async with MockProvider() as p:
            p.delay("welcome:u1:job-1", 0.5)
            async with Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=RedisLedger.from_url(server.url)) as e:
                sending = asyncio.ensure_future(e.send(job(), BODY))
                await asyncio.sleep(0.2)
                client = aioredis.Redis.from_url(server.url)
                await client.flushall()  # what a restart without persistence leaves
                await client.aclose()
                result: SendResult = await sending
                record = await e.ledger.get("welcome:u1:job-1")  # type: ignore[union-attr]
    assert record is not None and record.state == "done" and record.response is not None
    assert record.response["id"] == result.id
    lines = [r.getMessage() for r in caplog.records]
    assert any("vanished" in line for line in lines), lines
    assert not any("another worker" in line for line in lines), lines
