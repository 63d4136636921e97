"""The QStash handler's security and input checks, over real HTTP (and once through ASGI)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from idemsend import ConfigError, Engine, Job, RetryableError
from idemsend.adapters.qstash import (
    MAX_RETRY_AFTER,
    InMemoryReplayGuard,
    QStashHandler,
    RedisReplayGuard,
    ReplayGuardUnavailable,
    SignatureReplayGuard,
    retry_after_seconds,
)
from idemsend.adapters.qstash._handler import CLOCK_SKEW_MARGIN
from idemsend.testing import MockProvider
from idemsend.testing._redis_server import free_port
from idemsend.testing.qstash import QStashDeliverer, sign
from tests._serving import serving as serving_app

pytestmark = pytest.mark.anyio

CURRENT, NEXT = "sig_current_" + "a" * 32, "sig_next_" + "b" * 32
MESSAGE = {"data": {"user_id": "u1"}, "body": {"to": ["ada@example.com"]}}


class Webhook:
    def __init__(self, provider: MockProvider, url: str, handler: QStashHandler) -> None:
        self.provider, self.url, self.handler = provider, url, handler

    def deliverer(self, **kw: Any) -> QStashDeliverer:
        kw.setdefault("signing_key", CURRENT)
        return QStashDeliverer(self.url, retries=0, **kw)


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    async with MockProvider() as provider:
        port = free_port()
        url = f"http://127.0.0.1:{port}/hook"
        engine = Engine(provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key)
        handler = QStashHandler(
            lambda: engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=url, max_body=256 * 1024,
            allow_volatile_replay_guard=True,  # one process here; the durable guards: test_durable_guard.py
        )
        async with serving(handler, port):
            yield Webhook(provider, url, handler)


async def test_valid_delivery_sends_once(webhook: Webhook) -> None:
    d = await webhook.deliverer().deliver(MESSAGE, message_id="msg_1")
    assert d.state == "delivered" and d.last.status == 200
    assert d.last.body["key"] == "welcome:u1:msg_1" and d.last.body["replayed"] is False
    again = await webhook.deliverer().deliver(MESSAGE, message_id="msg_1")
    assert again.last.body["replayed"] is True
    assert webhook.provider.sends == 1


async def test_token_signed_with_the_next_key_is_accepted(webhook: Webhook) -> None:
    d = await webhook.deliverer(signing_key=NEXT).deliver(MESSAGE, message_id="msg_next")
    assert d.last.status == 200 and webhook.provider.sends == 1


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        # the SDK tries the next key after the current one fails, and reports the last error
        ("forged", "signature"),
        ("other body", "signature"),
        ("expired", "signature"),
        ("wrong url", "signature"),
        ("missing", "missing"),
        ("not yet valid", "signature"),
    ],
)
async def test_bad_signatures_get_401_and_send_nothing(webhook: Webhook, case: str, needle: str) -> None:
    raw = json.dumps(MESSAGE).encode()
    now = time.time()
    signature = {
        "forged": sign(raw, webhook.url, "sig_forged_" + "c" * 32),
        "other body": sign(b'{"data":{"user_id":"evil"},"body":{}}', webhook.url, CURRENT),
        "expired": sign(raw, webhook.url, CURRENT, now=now - 3600, ttl=300),
        "wrong url": sign(raw, "https://example.com/other", CURRENT),
        "missing": None,
        "not yet valid": sign(raw, webhook.url, CURRENT, now=now + 3600),
    }[case]
    headers = {} if signature is not None else {"Upstash-Signature": ""}
    d = await webhook.deliverer().deliver(raw, message_id="msg_bad", signature=signature, headers=headers)
    assert d.last.status == 401, d.last.body
    assert needle.lower() in d.last.body["error"]["message"].lower()
    assert webhook.provider.stats.requests == 0


async def test_oversized_body_gets_413(webhook: Webhook) -> None:
    big = {"data": {"user_id": "u1"}, "body": {"blob": "x" * 300_000}}
    d = await webhook.deliverer().deliver(big, message_id="msg_big")
    assert d.last.status == 413 and d.state == "exhausted"
    assert webhook.provider.stats.requests == 0


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"not json", "INVALID_MESSAGE"),
        ({"no": "body"}, "INVALID_MESSAGE"),
        ({"data": [1], "body": {}}, "INVALID_MESSAGE"),
    ],
)
async def test_unexpected_json_is_non_retryable(webhook: Webhook, message: Any, code: str) -> None:
    d = await webhook.deliverer().deliver(message, message_id="msg_json")
    assert d.state == "failed" and d.last.status == 489
    assert d.last.headers["Upstash-NonRetryable-Error"] == "true"
    assert d.last.body["error"]["code"] == code
    assert webhook.provider.stats.requests == 0


async def test_fatal_and_retryable_statuses(webhook: Webhook) -> None:
    webhook.provider.faults.retry_after = 30  # longer than the engine waits in process
    webhook.provider.script("429", key="welcome:u1:msg_429")
    d = await webhook.deliverer().deliver(MESSAGE, message_id="msg_429")
    assert d.last.status == 503 and d.last.headers["Retry-After"] == "30"
    bad_key = {"data": {"user_id": "a b"}, "body": {}}
    d = await webhook.deliverer().deliver(bad_key, message_id="msg_key")
    assert d.last.status == 489 and d.last.body["error"]["code"] == "KEY_DERIVATION"


async def test_an_answer_lost_after_the_send_then_503s_is_answered_as_maybe_sent(webhook: Webhook) -> None:
    """Issue 18 item 4: the provider ran try 1 but its answer was lost; every later try
    got 503. The 503 QStash records says the job may have been sent (text and
    ``maybe_sent``), on this delivery and on QStash's retry of it."""
    webhook.provider.script("lost", *["5xx"] * 12, key="welcome:u1:msg_lost")
    deliverer = QStashDeliverer(webhook.url, signing_key=CURRENT, retries=1, backoff=lambda n: 0.0)
    d = await deliverer.deliver(MESSAGE, message_id="msg_lost")
    assert [a.status for a in d.attempts] == [503, 503] and webhook.provider.sends == 1
    for attempt in d.attempts:
        error = attempt.body["error"]
        assert error["code"] == "RETRY" and error["maybe_sent"] is True, error
        assert "may have been sent" in error["message"] and "not sent" not in error["message"]
    d = await webhook.deliverer().deliver({"data": {"user_id": "a b"}, "body": {}}, message_id="msg_never")
    assert d.last.status == 489 and d.last.body["error"]["maybe_sent"] is False  # failed before any request


async def test_asgi_app_verifies_and_sends(webhook: Webhook) -> None:
    app = webhook.handler.asgi_app()
    raw = json.dumps(MESSAGE).encode()

    async def call(signature: str) -> tuple[int, dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": raw[:10], "more_body": True},
                    {"type": "http.request", "body": raw[10:], "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        host = webhook.url.split("/")[2]
        scope = {
            "type": "http", "method": "POST", "scheme": "http", "path": "/hook", "root_path": "", "query_string": b"",
            "headers": [(b"host", host.encode()), (b"upstash-signature", signature.encode()),
                        (b"upstash-message-id", b"msg_asgi")],
        }
        await app(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    status, body = await call("garbage")
    assert status == 401 and webhook.provider.stats.requests == 0
    status, body = await call(sign(raw, webhook.url, CURRENT))
    assert status == 200 and body["key"] == "welcome:u1:msg_asgi"
    assert webhook.provider.sends == 1


HOOK = "https://hooks.example.com/qstash"


def test_handler_repr_hides_keys() -> None:
    handler = QStashHandler(lambda: None, current_signing_key=CURRENT, next_signing_key=NEXT, url=HOOK)  # type: ignore[arg-type,return-value]
    assert CURRENT not in repr(handler) and NEXT not in repr(handler)


async def test_a_body_in_many_tcp_segments_is_read_whole() -> None:
    async with MockProvider() as provider:
        port = free_port()
        url = f"http://127.0.0.1:{port}/hook"
        engine = Engine(provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key)
        handler = QStashHandler(
            lambda: engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=url,
            allow_volatile_replay_guard=True,
        )
        async with serving(handler, port):
            big = {"data": {"user_id": "u1"}, "body": {"html": "x" * 600_000}}
            d = await QStashDeliverer(url, signing_key=CURRENT, retries=0).deliver(big, message_id="msg_big_ok")
    assert d.last.status == 200, d.last.body
    assert provider.sends == 1


async def test_aiohttp_app_fails_at_startup_on_a_bad_engine_factory() -> None:
    handler = QStashHandler(lambda: "not an engine", current_signing_key=CURRENT, next_signing_key=NEXT, url=HOOK)  # type: ignore[arg-type,return-value]
    runner = web.AppRunner(handler.aiohttp_app("/hook"))
    with pytest.raises(ConfigError, match=r"not an idemsend\.Engine"):
        await runner.setup()
    await runner.cleanup()


async def test_asgi_lifespan_starts_the_engine_or_reports_why_not() -> None:
    async def lifespan(handler: QStashHandler) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await handler.asgi_app()({"type": "lifespan"}, receive, send)
        return sent

    bad = QStashHandler(lambda: "not an engine", current_signing_key=CURRENT, next_signing_key=NEXT, url=HOOK)  # type: ignore[arg-type,return-value]
    sent = await lifespan(bad)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "not an idemsend.Engine" in sent[0]["message"]

    made: list[Engine] = []

    def factory() -> Engine:
        made.append(Engine("http://127.0.0.1:9/api/v1/emails", key="k:{job_id}", api_key="x"))
        return made[-1]

    good = QStashHandler(
        factory, current_signing_key=CURRENT, next_signing_key=NEXT, url=HOOK, allow_volatile_replay_guard=True
    )
    sent = await lifespan(good)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert len(made) == 1  # started at startup, closed at shutdown
    with pytest.raises(ConfigError, match="closed"):
        await made[0].send(Job("j1"), {"to": ["a@example.com"]})


# -- helpers for the tests below --------------------------------------------------------------


@asynccontextmanager
async def serving(handler: QStashHandler, port: int) -> AsyncIterator[None]:
    """``handler`` served by aiohttp at http://127.0.0.1:<port>/hook."""
    async with serving_app(handler.aiohttp_app("/hook"), port):
        yield


def handler_for(provider: MockProvider, url: str, **kw: Any) -> QStashHandler:
    engine = Engine(provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key)
    kw.setdefault("allow_volatile_replay_guard", True)  # no ledger: one process, not restarted
    return QStashHandler(lambda: engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=url, **kw)


def forge(claims: dict[str, Any], key: str = CURRENT, header: bytes = b'{"alg":"HS256","typ":"JWT"}') -> str:
    """An HS256 token signed with ``key`` over any claims (PyJWT's encode refuses some)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(header) + b"." + b64(json.dumps(claims).encode())
    mac = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(mac)).decode()


def claims_for(raw: bytes, url: str, **over: Any) -> dict[str, Any]:
    import base64
    import hashlib

    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "Upstash", "sub": url, "exp": now + 300, "nbf": now, "iat": now, "jti": f"jwt_{now}_{id(over)}",
        "body": base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode(),
    }
    for name, value in over.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


async def raw_post(
    url: str, body: bytes, headers: list[tuple[bytes, bytes]], *, host: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST over a plain socket, so header bytes go out exactly as given (aiohttp's client
    would refuse non-UTF-8 values)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [
        b"POST " + parts.path.encode() + b" HTTP/1.1", b"Host: " + (host or parts.netloc.encode()),
        b"Connection: close", b"Content-Length: " + str(len(body)).encode(),
        *(name + b": " + value for name, value in headers),
    ]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    await writer.wait_closed()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    try:
        payload: Any = json.loads(rest)
    except ValueError:
        payload = rest.decode("latin-1")
    return int(status_line.split()[1]), answer_headers, payload


def jti_of(signature: str) -> str:
    import jwt

    return str(jwt.decode(signature, options={"verify_signature": False})["jti"])


# -- 1. a captured delivery replayed with fresh message ids ----------------------------------


async def test_a_captured_signature_replayed_with_fresh_message_ids_sends_once(webhook: Webhook) -> None:
    raw = json.dumps(MESSAGE).encode()
    first = await webhook.deliverer().deliver(raw, message_id="msg_original")
    assert first.last.status == 200, first.last.body
    captured = first.last.sent_headers["Upstash-Signature"]
    for fresh in ("msg_replay_1", "msg_replay_2"):
        d = await webhook.deliverer().deliver(raw, message_id=fresh, signature=captured)
        assert d.last.status == 401, d.last.body
        assert d.last.body["error"]["code"] == "REPLAYED_SIGNATURE"
    assert webhook.provider.sends == 1
    assert webhook.provider.stats.requests == 1


async def test_the_same_signature_with_the_same_message_id_is_a_duplicate_not_a_replay(webhook: Webhook) -> None:
    raw = json.dumps(MESSAGE).encode()
    first = await webhook.deliverer().deliver(raw, message_id="msg_dup")
    captured = first.last.sent_headers["Upstash-Signature"]
    again = await webhook.deliverer().deliver(raw, message_id="msg_dup", signature=captured)
    assert again.last.status == 200 and again.last.body["replayed"] is True
    assert webhook.provider.sends == 1


async def test_a_token_without_jti_is_refused(webhook: Webhook) -> None:
    raw = json.dumps(MESSAGE).encode()
    signature = sign(raw, webhook.url, CURRENT, claims={"jti": None})
    d = await webhook.deliverer().deliver(raw, message_id="msg_nojti", signature=signature)
    assert d.last.status == 401 and d.last.body["error"]["code"] == "MISSING_JTI"
    assert webhook.provider.stats.requests == 0


async def test_a_token_valid_for_hours_is_refused(webhook: Webhook) -> None:
    raw = json.dumps(MESSAGE).encode()
    signature = sign(raw, webhook.url, CURRENT, ttl=7200)
    d = await webhook.deliverer().deliver(raw, message_id="msg_long", signature=signature)
    assert d.last.status == 401 and d.last.body["error"]["code"] == "TOKEN_LIFETIME_TOO_LONG"
    assert webhook.provider.stats.requests == 0


async def test_redis_replay_guard_is_shared_by_every_webhook_process(redis_url: str) -> None:
    import redis.asyncio as aioredis

    public = "https://hooks.example.com/qstash"  # one endpoint, two processes behind it
    prefix = f"test:{time.time_ns()}:jti:"
    guards = [RedisReplayGuard.from_url(redis_url, prefix=prefix) for _ in range(2)]
    ports = [free_port(), free_port()]
    raw = json.dumps(MESSAGE).encode()
    try:
        async with MockProvider() as provider:
            handlers = [handler_for(provider, public, replay_guard=g) for g in guards]
            async with serving(handlers[0], ports[0]), serving(handlers[1], ports[1]):
                a, b = (
                    QStashDeliverer(f"http://127.0.0.1:{p}/hook", signing_key=CURRENT, retries=0, sign_url=public)
                    for p in ports
                )
                first = await a.deliver(raw, message_id="msg_a")
                assert first.last.status == 200, first.last.body
                captured = first.last.sent_headers["Upstash-Signature"]
                replay = await b.deliver(raw, message_id="msg_b", signature=captured)
                assert replay.last.status == 401 and replay.last.body["error"]["code"] == "REPLAYED_SIGNATURE"
                duplicate = await b.deliver(raw, message_id="msg_a", signature=captured)
                assert duplicate.last.status == 200 and duplicate.last.body["replayed"] is True
            assert provider.sends == 1
        client = aioredis.Redis.from_url(redis_url)
        try:
            key = prefix + jti_of(captured)
            assert await client.get(key) == b"msg_a"
            # kept while any host may still accept the token (its life plus the tolerance plus
            # the clock-skew margin), and not much longer
            tolerance = handlers[0].clock_tolerance
            assert 300_000 < await client.pttl(key) <= (301 + tolerance + CLOCK_SKEW_MARGIN) * 1000
        finally:
            await client.aclose()
    finally:
        for guard in guards:
            await guard.aclose()


async def test_a_host_whose_clock_runs_ahead_keeps_the_jti_while_other_hosts_accept_the_token(
    redis_url: str,
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    ahead = RedisReplayGuard(client, prefix=f"test:{time.time_ns()}:jti:", clock=lambda: time.time() + 30)
    exp = time.time() + 300  # the token's expiry, by the real clock of the other hosts
    try:
        assert await ahead.remember("jti-1", "msg_a", exp + CLOCK_SKEW_MARGIN) == "msg_a"
        left = await client.pttl(ahead.prefix + "jti-1") / 1000
        # the host 30 s ahead computes a shorter life, yet the key outlives the token on every
        # host whose clock is within the margin
        assert left > exp - time.time()
    finally:
        await client.aclose()


async def test_an_unreachable_replay_guard_fails_closed() -> None:
    guard = RedisReplayGuard.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    try:
        async with MockProvider() as provider:
            async with serving(handler_for(provider, url, replay_guard=guard), port):
                d = await QStashDeliverer(url, signing_key=CURRENT, retries=0).deliver(MESSAGE, message_id="msg_down")
            assert d.last.status == 503, d.last.body
            assert d.last.body["error"]["code"] == "REPLAY_GUARD_UNAVAILABLE"
            # no Retry-After: QStash's own backoff spreads the retries over the guard's outage
            assert "Retry-After" not in d.last.headers
            assert provider.stats.requests == 0
    finally:
        await guard.aclose()


async def test_a_full_in_memory_guard_fails_closed_instead_of_forgetting() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    async with MockProvider() as provider:
        async with serving(handler_for(provider, url, replay_guard=InMemoryReplayGuard(max_entries=1)), port):
            deliverer = QStashDeliverer(url, signing_key=CURRENT, retries=0)
            assert (await deliverer.deliver(MESSAGE, message_id="msg_1")).last.status == 200
            full = await deliverer.deliver(MESSAGE, message_id="msg_2")
        assert full.last.status == 503 and full.last.body["error"]["code"] == "REPLAY_GUARD_UNAVAILABLE"
        assert provider.sends == 1


async def test_in_memory_guard_remembers_until_expiry_then_forgets() -> None:
    now = [1000.0]
    guard = InMemoryReplayGuard(max_entries=2, clock=lambda: now[0])
    assert isinstance(guard, SignatureReplayGuard)
    assert await guard.remember("jti_1", "msg_a", 1300.0) == "msg_a"
    assert await guard.remember("jti_1", "msg_b", 1300.0) == "msg_a"
    assert await guard.remember("jti_2", "msg_c", 1100.0) == "msg_c"
    with pytest.raises(ReplayGuardUnavailable):
        await guard.remember("jti_3", "msg_d", 1300.0)
    now[0] = 1100.0  # jti_2's token has expired: swept, room again
    assert await guard.remember("jti_3", "msg_d", 1300.0) == "msg_d"
    assert len(guard) == 2
    now[0] = 1300.0
    guard.sweep()
    assert len(guard) == 0


async def test_job_id_from_body_makes_a_replay_the_same_job() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    message = {"job_id": "order-42", **MESSAGE}
    raw = json.dumps(message).encode()
    async with MockProvider() as provider:
        async with serving(handler_for(provider, url, job_id_from="body"), port):
            deliverer = QStashDeliverer(url, signing_key=CURRENT, retries=0)
            first = await deliverer.deliver(raw, message_id="msg_x")
            assert first.last.status == 200 and first.last.body["key"] == "welcome:u1:order-42"
            captured = first.last.sent_headers["Upstash-Signature"]
            replay = await deliverer.deliver(raw, message_id="msg_forged", signature=captured)
            assert replay.last.status == 200 and replay.last.body["replayed"] is True
            assert replay.last.body["key"] == "welcome:u1:order-42"
            no_id = await deliverer.deliver(MESSAGE, message_id="msg_y")
            assert no_id.last.status == 489 and no_id.last.body["error"]["code"] == "MISSING_MESSAGE_ID"
            for bad in (5, ["x"], "a b", "x" * 300, ""):
                d = await deliverer.deliver({**MESSAGE, "job_id": bad}, message_id="msg_z")
                assert d.last.status == 489 and d.last.body["error"]["code"] == "INVALID_MESSAGE_ID", (bad, d.last.body)
        assert provider.sends == 1


# -- 2. the subject is the configured URL, not one built from Host ----------------------------


def test_url_is_required() -> None:
    with pytest.raises(ConfigError, match=r"url=.*sub"):
        QStashHandler(lambda: None, current_signing_key=CURRENT, next_signing_key=NEXT)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="not both"):
        QStashHandler(lambda: None, current_signing_key=CURRENT, next_signing_key=NEXT, url=HOOK, url_from_request=True)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="absolute"):
        QStashHandler(lambda: None, current_signing_key=CURRENT, next_signing_key=NEXT, url="/qstash")  # type: ignore[arg-type,return-value]


async def test_a_token_signed_for_another_endpoint_is_refused_whatever_the_host(webhook: Webhook) -> None:
    staging = "http://staging.example.com/hook"
    raw = json.dumps(MESSAGE).encode()
    status, _, body = await raw_post(
        webhook.url, raw, [(b"Upstash-Signature", sign(raw, staging, CURRENT).encode()),
                           (b"Upstash-Message-Id", b"msg_staging")],
        host=b"staging.example.com",
    )
    assert status == 401 and body["error"]["code"] == "INVALID_SIGNATURE"
    assert webhook.provider.stats.requests == 0


async def test_url_from_request_is_an_explicit_opt_in() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    raw = json.dumps(MESSAGE).encode()
    async with MockProvider() as provider:
        handler = handler_for(provider, None, url_from_request=True)  # type: ignore[arg-type]
        async with serving(handler, port):
            ok = await QStashDeliverer(url, signing_key=CURRENT, retries=0).deliver(raw, message_id="msg_host")
            assert ok.last.status == 200, ok.last.body
            # the risk it documents: whoever picks Host picks the subject checked
            other = "http://other.example.com/hook"
            status, _, _ = await raw_post(
                url, raw, [(b"Upstash-Signature", sign(raw, other, CURRENT).encode()),
                           (b"Upstash-Message-Id", b"msg_other")], host=b"other.example.com",
            )
            assert status == 200
            # a Host no URL can be built from is a 401, not a 500
            status, _, body = await raw_post(
                url, raw, [(b"Upstash-Signature", sign(raw, url, CURRENT).encode()),
                           (b"Upstash-Message-Id", b"msg_badhost")], host=b"a b\xff",
            )
            assert status == 401, body
        assert provider.sends == 2


def test_webhook_app_requires_the_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "adapters" / "qstash_webhook" / "app.py"
    spec = importlib.util.spec_from_file_location("qstash_webhook_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("QSTASH_CURRENT_SIGNING_KEY", CURRENT)
    monkeypatch.setenv("QSTASH_NEXT_SIGNING_KEY", NEXT)
    monkeypatch.delenv("QSTASH_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("QSTASH_URL_FROM_REQUEST", raising=False)
    monkeypatch.delenv("QSTASH_REPLAY_GUARD_URL", raising=False)
    monkeypatch.delenv("IDEMSEND_LEDGER_URL", raising=False)
    with pytest.raises(ConfigError, match="QSTASH_ENDPOINT_URL"):
        module.make_app()
    monkeypatch.setenv("QSTASH_ENDPOINT_URL", HOOK)
    assert isinstance(module.make_app(), web.Application)
    monkeypatch.delenv("QSTASH_ENDPOINT_URL")
    monkeypatch.setenv("QSTASH_URL_FROM_REQUEST", "1")
    assert isinstance(module.make_app(), web.Application)


# -- 3. input that can never succeed: 401 or 489, never 500 -----------------------------------


def _nested_object(depth: int) -> bytes:
    inner = '{"a":' * depth + "1" + "}" * depth
    return ('{"data":{"user_id":"u1"},"body":' + inner + "}").encode()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 100_000, id="100k open brackets"),
        pytest.param(_nested_object(5000), id="valid 5000-deep object"),
        pytest.param(_nested_object(900), id="900 deep (parses, over max_depth)"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"data":{"user_id":"u1"},"body":{"n":NaN}}', id="NaN"),
        pytest.param(b'{"data":{"user_id":"u1"},"body":{"n":1e999}}', id="1e999"),
        pytest.param(b'{"data":{"user_id":"u1"},"body":{"to":"\\ud800"}}', id="lone surrogate in body"),
        pytest.param(b'{"data":{"user_id":"u1"},"body":{"\\udfff":1}}', id="lone surrogate in a key"),
        pytest.param(b'{"data":{"user_id":"u1"},"body":{"n":' + b"9" * 5000 + b"}}", id="5000-digit int"),
        pytest.param(b'{"data":{"user_id":{"deep":[1]}},"body":{}}', id="object as key field"),
    ],
)
async def test_a_message_that_can_never_succeed_gets_489_not_500(webhook: Webhook, raw: bytes) -> None:
    d = await webhook.deliverer().deliver(raw, message_id="msg_hostile")
    assert d.last.status == 489, d.last.body
    assert d.last.headers["Upstash-NonRetryable-Error"] == "true"
    assert webhook.provider.sends == 0


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        (b"Upstash-Retried", b"abc", "INVALID_HEADER"),
        (b"Upstash-Retried", b"9" * 5000, "INVALID_HEADER"),
        (b"Upstash-Retried", "\u00b2".encode(), "INVALID_HEADER"),
        (b"Upstash-Retried", b"-1", "INVALID_HEADER"),
        (b"Upstash-Message-Id", b"msg \xff\xfe", "INVALID_MESSAGE_ID"),
        (b"Upstash-Message-Id", "msg_\u00e9".encode(), "INVALID_MESSAGE_ID"),
        (b"Upstash-Message-Id", b"msg with spaces", "INVALID_MESSAGE_ID"),
        (b"Upstash-Message-Id", b"m" * 1000, "INVALID_MESSAGE_ID"),
        (b"Upstash-Message-Id", b"msg\tctl", "INVALID_MESSAGE_ID"),
    ],
)
async def test_hostile_headers_get_489_not_500(webhook: Webhook, name: bytes, value: bytes, code: str) -> None:
    raw = json.dumps(MESSAGE).encode()
    headers = {b"Upstash-Message-Id": b"msg_ok", b"Upstash-Retried": b"0", name: value}
    headers[b"Upstash-Signature"] = sign(raw, webhook.url, CURRENT).encode()
    status, answer, body = await raw_post(webhook.url, raw, list(headers.items()))
    assert status == 489, body
    assert answer["Upstash-NonRetryable-Error"] == "true" and body["error"]["code"] == code
    assert webhook.provider.stats.requests == 0


def _token_cases() -> list[Any]:
    raw = json.dumps(MESSAGE).encode()
    return [
        pytest.param(lambda url: forge(claims_for(raw, url, body=None)), id="no body claim"),
        pytest.param(lambda url: forge(claims_for(raw, url, body=12345)), id="body claim not a string"),
        pytest.param(lambda url: forge(claims_for(raw, url, sub=None)), id="no sub claim"),
        pytest.param(lambda url: forge(claims_for(raw, url, jti=12345)), id="jti not a string"),
        pytest.param(lambda url: forge(claims_for(raw, url, jti="j" * 1000)), id="jti 1000 chars"),
        pytest.param(lambda url: forge(claims_for(raw, url, jti="jti with spaces")), id="jti not visible ASCII"),
        pytest.param(lambda url: forge(claims_for(raw, url, exp=str(int(time.time()) + 300))), id="exp a string"),
        pytest.param(lambda url: forge(claims_for(raw, url, exp=1e308)), id="exp 1e308"),
        pytest.param(lambda url: forge(claims_for(raw, url, iat="now")), id="iat a string"),
        pytest.param(lambda url: forge(claims_for(raw, url), header=b'{"alg":"none"}'), id="alg none"),
        pytest.param(lambda url: forge(claims_for(raw, url), header=b"[1]"), id="header not an object"),
        pytest.param(lambda url: "a.b", id="two segments"),
        pytest.param(lambda url: "a.b.c.d", id="four segments"),
        pytest.param(lambda url: "...", id="empty segments"),
        pytest.param(lambda url: "x" * 8000, id="8000 characters"),
    ]


@pytest.mark.parametrize("make_token", _token_cases())
async def test_hostile_tokens_get_401_not_500(webhook: Webhook, make_token: Callable[[str], str]) -> None:
    raw = json.dumps(MESSAGE).encode()
    status, _, body = await raw_post(
        webhook.url, raw, [(b"Upstash-Signature", make_token(webhook.url).encode()), (b"Upstash-Message-Id", b"m1")]
    )
    assert status == 401, body
    assert webhook.provider.stats.requests == 0


async def test_non_utf8_signature_and_undecodable_body_get_401_not_500(webhook: Webhook) -> None:
    raw = json.dumps(MESSAGE).encode()
    status, _, body = await raw_post(
        webhook.url, raw, [(b"Upstash-Signature", b"\xff\xfe.\x80.\x81"), (b"Upstash-Message-Id", b"m1")]
    )
    assert status == 401, body
    status, _, body = await raw_post(
        webhook.url, b"not gzip at all", [(b"Upstash-Signature", sign(raw, webhook.url, CURRENT).encode()),
                                          (b"Upstash-Message-Id", b"m2"), (b"Content-Encoding", b"gzip")]
    )
    assert status == 401 and body["error"]["code"] == "UNREADABLE_BODY", body
    assert webhook.provider.stats.requests == 0


def _raise(exc: Exception) -> Any:
    raise exc


@pytest.mark.parametrize(
    "parse",
    [
        pytest.param(lambda payload: _raise(TypeError("no")), id="raises TypeError"),
        pytest.param(lambda payload: payload["missing"], id="raises KeyError"),
        pytest.param(lambda payload: _raise(AttributeError("no")), id="raises AttributeError"),
        pytest.param(lambda payload: payload, id="returns a dict, not a pair"),
        pytest.param(lambda payload: (5, {}), id="data not an object"),
        pytest.param(lambda payload: None, id="returns None"),
    ],
)
async def test_a_parse_function_that_fails_gets_489_not_500(parse: Callable[[Any], Any]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    async with MockProvider() as provider:
        async with serving(handler_for(provider, url, parse=parse), port):
            d = await QStashDeliverer(url, signing_key=CURRENT, retries=0).deliver(MESSAGE, message_id="msg_parse")
        assert d.last.status == 489 and d.last.body["error"]["code"] == "INVALID_MESSAGE", d.last.body
        assert provider.stats.requests == 0


class _AlwaysRetry(Engine):
    """An engine whose send always asks for a retry after ``after`` seconds."""

    def __init__(self, url: str, after: float | None) -> None:
        super().__init__(url, key="k:{job_id}", api_key="x")
        self.after = after

    async def send(self, job: Job, body: Any, *, attempt: int | None = None, queue: str | None = None) -> Any:
        raise RetryableError("busy", retry_after=self.after)


@pytest.mark.parametrize(
    ("after", "expected"),
    [(math.inf, math.ceil(MAX_RETRY_AFTER)), (math.nan, None), (1e308, math.ceil(MAX_RETRY_AFTER)), (-5.0, 0),
     (None, None), (2.2, 3), (MAX_RETRY_AFTER + 0.5, math.ceil(MAX_RETRY_AFTER))],
)
async def test_a_hostile_retry_after_is_clamped(after: float | None, expected: int | None) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    async with MockProvider() as provider:
        engine = _AlwaysRetry(provider.emails_url, after)
        handler = QStashHandler(
            lambda: engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=url,
            allow_volatile_replay_guard=True,
        )
        async with serving(handler, port):
            d = await QStashDeliverer(url, signing_key=CURRENT, retries=0).deliver(MESSAGE, message_id="msg_after")
    assert d.last.status == 503, d.last.body
    # no delay named: no header, so QStash's own retry schedule applies
    assert d.last.headers.get("Retry-After") == (None if expected is None else str(expected))
    assert retry_after_seconds(after) == expected


async def test_asgi_app_answers_hostile_input_with_401_or_489() -> None:
    async with MockProvider() as provider:
        handler = handler_for(provider, HOOK)
        by_host = handler_for(provider, None, url_from_request=True)  # type: ignore[arg-type]
        raw = json.dumps(MESSAGE).encode()

        async def call(app_of: QStashHandler, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> int:
            sent: list[dict[str, Any]] = []
            incoming = [{"type": "http.request", "body": raw, "more_body": False}]

            async def receive() -> dict[str, Any]:
                return incoming.pop(0)

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "scheme": "https", "path": "/qstash", "root_path": "",
                     "query_string": query, "headers": [(b"host", b"hooks.example.com"), *headers]}
            await app_of.asgi_app()(scope, receive, send)
            return int(sent[0]["status"])

        good = sign(raw, HOOK, CURRENT).encode()
        assert await call(handler, [(b"upstash-signature", b"x" * 100_000), (b"upstash-message-id", b"m1")]) == 401
        assert await call(handler, [(b"upstash-signature", good), (b"upstash-message-id", b"m\xff\xfe")]) == 489
        assert await call(handler, [(b"upstash-signature", good), (b"upstash-message-id", b"m1"),
                                    (b"upstash-retried", b"\xb2")]) == 489
        assert await call(by_host, [(b"upstash-signature", good), (b"upstash-message-id", b"m2")], b"a=\xff") == 401
        await handler.aclose()
        await by_host.aclose()
        assert provider.stats.requests == 0
