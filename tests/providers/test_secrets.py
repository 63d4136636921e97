"""A signature or a signing secret never appears in a log line, error, repr, result or
ledger record (issue 20 item 2), even from a receiver that echoes them back."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from idemsend import Engine, FatalError, Job, Provider, RetryPolicy
from idemsend.ledger import MemoryLedger

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[str]]]:
    """A receiver that echoes the signature and the secret in its answers: 200 on /ok,
    400 on /refuse."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        signature = request.headers["webhook-signature"]
        seen.append(signature)
        said = {"message": f"signature {signature} with {SECRET} and {SECRET[6:]}", "echo": [signature]}
        return web.json_response(said, status=200 if request.path == "/ok" else 400)

    app = web.Application()
    app.router.add_post("/ok", answer)
    app.router.add_post("/refuse", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def _clean(text: str, seen: list[str]) -> None:
    assert SECRET not in text and SECRET[6:] not in text
    for signature in seen:
        assert signature not in text and signature[3:] not in text


async def test_an_echoed_signature_and_secret_reach_no_result_record_log_or_repr(
    echo: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    base, seen = echo
    ledger = MemoryLedger()
    caplog.set_level(logging.DEBUG, logger="idemsend")
    engine = Engine(f"{base}/ok", key="evt:{n}", provider=Provider.standard_webhooks(SECRET), ledger=ledger)
    async with engine:
        result = await engine.send(Job("j1", {"n": "1"}), {"type": "x"})
        record = await ledger.get("evt:1")
    assert seen, "the receiver saw the signature"
    _clean(repr(result.response) + repr(result) + repr(record) + repr(engine) + repr(engine.provider), seen)
    _clean(caplog.text, seen)


async def test_an_echoed_signature_reaches_no_error(
    echo: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    base, seen = echo
    caplog.set_level(logging.DEBUG, logger="idemsend")
    engine = Engine(
        f"{base}/refuse", key="evt:{n}", provider=Provider.standard_webhooks(SECRET), retry=RetryPolicy(retries=0)
    )
    async with engine:
        with pytest.raises(FatalError) as caught:
            await engine.send(Job("j2", {"n": "2"}), {"type": "x"})
    assert "[redacted]" in str(caught.value)
    _clean(str(caught.value) + repr(caught.value) + repr(caught.value.tries), seen)
    _clean(caplog.text, seen)


def test_a_transport_request_repr_shows_no_header_or_body() -> None:
    from idemsend import TransportRequest

    request = TransportRequest("http://h/x", {"webhook-signature": "v1,c2lnbmF0dXJl"}, b"body-bytes", 5.0)
    assert "c2lnbmF0dXJl" not in repr(request) and "body-bytes" not in repr(request)
    assert request.headers["webhook-signature"] == "v1,c2lnbmF0dXJl"
