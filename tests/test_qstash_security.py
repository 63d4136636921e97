"""The QStash handler's security and input checks, over real HTTP (and once through ASGI)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from idemsend import ConfigError, Engine, Job
from idemsend.adapters.qstash import QStashHandler
from idemsend.testing import MockProvider
from idemsend.testing._redis_server import free_port
from idemsend.testing.qstash import QStashDeliverer, sign

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
            lambda: engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=url, max_body=4096
        )
        runner = web.AppRunner(handler.aiohttp_app("/hook"))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield Webhook(provider, url, handler)
        finally:
            await runner.cleanup()


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
    big = {"data": {"user_id": "u1"}, "body": {"blob": "x" * 5000}}
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


def test_handler_repr_hides_keys() -> None:
    handler = QStashHandler(lambda: None, current_signing_key=CURRENT, next_signing_key=NEXT)  # type: ignore[arg-type,return-value]
    assert CURRENT not in repr(handler) and NEXT not in repr(handler)


async def test_a_body_in_many_tcp_segments_is_read_whole() -> None:
    async with MockProvider() as provider:
        port = free_port()
        url = f"http://127.0.0.1:{port}/hook"
        engine = Engine(provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key)
        handler = QStashHandler(lambda: engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=url)
        runner = web.AppRunner(handler.aiohttp_app("/hook"))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            big = {"data": {"user_id": "u1"}, "body": {"html": "x" * 600_000}}
            d = await QStashDeliverer(url, signing_key=CURRENT, retries=0).deliver(big, message_id="msg_big_ok")
        finally:
            await runner.cleanup()
    assert d.last.status == 200, d.last.body
    assert provider.sends == 1


async def test_aiohttp_app_fails_at_startup_on_a_bad_engine_factory() -> None:
    handler = QStashHandler(lambda: "not an engine", current_signing_key=CURRENT, next_signing_key=NEXT)  # type: ignore[arg-type,return-value]
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

    bad = QStashHandler(lambda: "not an engine", current_signing_key=CURRENT, next_signing_key=NEXT)  # type: ignore[arg-type,return-value]
    sent = await lifespan(bad)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "not an idemsend.Engine" in sent[0]["message"]

    made: list[Engine] = []

    def factory() -> Engine:
        made.append(Engine("http://127.0.0.1:9/api/v1/emails", key="k:{job_id}", api_key="x"))
        return made[-1]

    good = QStashHandler(factory, current_signing_key=CURRENT, next_signing_key=NEXT)
    sent = await lifespan(good)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert len(made) == 1  # started at startup, closed at shutdown
    with pytest.raises(ConfigError, match="not started"):
        await made[0].send(Job("j1"), {"to": ["a@example.com"]})
