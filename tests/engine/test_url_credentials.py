"""A credential in the URL's query never leaves the engine, in whatever form the URL takes.

The engine knows the query values decoded (``s3cr+t/K3y==``); on the wire and in aiohttp's
own error text they are percent-encoded (``s3cr%2Bt/K3y%3D%3D``), and a provider echoing the
request line may encode them again, in lowercase hex, or with ``+`` for a space. A raw TCP
server here answers what no HTTP library would send: a garbled status line (aiohttp raises
``ClientResponseError``, whose text names the URL) and a 400 echoing the request target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import quote, unquote, unquote_plus

import pytest

from idemsend import Engine, FatalError, Job, RetryableError, TransportError, TransportRequest
from idemsend._transport import AiohttpTransport
from idemsend.ledger import MemoryLedger

pytestmark = pytest.mark.anyio

TOKEN = "s3cr+t/K3y=="  # what the engine knows: the decoded query value
SIG = "open sesame 42"  # a value with spaces: "+" on the wire
QUERY = f"token={quote(TOKEN, safe='/')}&sig=open+sesame+42"  # token=s3cr%2Bt/K3y%3D%3D


def _leaks(text: str) -> bool:
    """Whether ``text`` spells a secret in any URL form: as is, or once or twice decoded."""
    forms = {text, unquote(text), unquote_plus(text), unquote(unquote(text)), unquote_plus(unquote(text))}
    return any(secret in form for form in forms for secret in (TOKEN, SIG))


def _target(head: bytes) -> str:
    return head.split(b"\r\n", 1)[0].split(b" ")[1].decode()


@asynccontextmanager
async def _raw_server(answer: Callable[[str], bytes]) -> AsyncIterator[str]:
    """A bare TCP server that reads one request and writes ``answer(request_target)`` as is."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            writer.write(answer(_target(head)))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/emails?{QUERY}"
    finally:
        server.close()
        await server.wait_closed()


def _garbled(target: str) -> bytes:
    return b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"


def _echo_400(spell: Callable[[str], str]) -> Callable[[str], bytes]:
    def answer(target: str) -> bytes:
        message = f"no route for POST {spell(target)} HTTP/1.1"
        body = json.dumps({"error": {"code": "BAD_ROUTE", "message": message}}).encode()
        return b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body,
        )

    return answer


def _all_encoded(target: str) -> str:
    path, _, query = target.partition("?")
    pairs = (pair.partition("=") for pair in query.split("&"))
    return path + "?" + "&".join(f"{k}={quote(unquote_plus(v), safe='')}" for k, _, v in pairs)


def _lower_hex(target: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), _all_encoded(target))


def _twice(target: str) -> str:
    return quote(target, safe="/?=&")


ECHOES = {
    "as-sent": lambda t: t,
    "percent-encoded": _all_encoded,
    "lowercase-hex": _lower_hex,
    "encoded-twice": _twice,
    "decoded": unquote,
    "space-as-%20": lambda t: t.replace("+", "%20"),
}


def _texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [text for r in caplog.records for text in (r.getMessage(), repr(r.__dict__))]


async def test_a_garbled_status_line_names_no_query_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with _raw_server(_garbled) as url, Engine(url, key="w:{job_id}", retry=0, ledger=MemoryLedger()) as engine:
        with pytest.raises(RetryableError) as caught:
            await engine.send(Job("j1"), {"to": ["ada@example.com"]})
    error = caught.value
    assert error.reason == "transport" and "ClientResponseError" in error.detail  # it still says what happened
    texts = [str(error), repr(error), error.detail, *_texts(caplog)]
    assert not [t for t in texts if _leaks(t)], [t for t in texts if _leaks(t)]


@pytest.mark.parametrize("spelling", ECHOES)
async def test_a_400_echoing_the_url_names_no_query_secret(caplog: pytest.LogCaptureFixture, spelling: str) -> None:
    assert _leaks(ECHOES[spelling](f"/v1/emails?{QUERY}"))  # the echo does spell the secret
    caplog.set_level(logging.DEBUG)
    ledger = MemoryLedger()
    async with _raw_server(_echo_400(ECHOES[spelling])) as url, Engine(url, key="w:{job_id}", ledger=ledger) as e:
        with pytest.raises(FatalError) as caught:
            await e.send(Job("j1"), {"to": ["ada@example.com"]})
        record = await ledger.get("w:j1")
    error = caught.value
    assert error.code == "BAD_ROUTE" and "no route for POST /v1/emails?" in error.detail
    assert record is not None and record.state == "fatal"
    texts = [str(error), repr(error), error.detail, repr(record), *_texts(caplog)]
    assert not [t for t in texts if _leaks(t)], [t for t in texts if _leaks(t)]


async def test_the_transports_error_text_names_no_url() -> None:
    """The transport does not know which query values are secret: its text, made of the
    error's fields, names neither the URL nor its query."""
    async with _raw_server(_garbled) as url:
        transport = AiohttpTransport(timeout=10)
        await transport.start()
        try:
            with pytest.raises(TransportError) as caught:
                await transport.post(TransportRequest(url, {}, b"{}"))
        finally:
            await transport.aclose()
    text = str(caught.value)
    assert caught.value.kind == "network" and "ClientResponseError 400: Bad status line" in text
    assert "token" not in text and "/v1/emails" not in text, text
