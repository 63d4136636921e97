"""AiohttpTransport reads at most ``max_response_bytes`` of an answer, however the answer
comes: with a Content-Length, chunked, or compressed (a gzip body's Content-Length is its
compressed size: a small one can decompress to gigabytes). A bigger answer is an unknown
outcome (TransportError, kind "network"), retried with the same key."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from idemsend import TransportError, TransportRequest
from idemsend._transport import AiohttpTransport
from tests._serving import serving

pytestmark = pytest.mark.anyio

CAP = 64 * 1024
SMALL = b'{"id":"em_1"}'


async def _plain(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * int(request.query["size"]), content_type="application/json")


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    left = int(request.query["size"])
    while left > 0:
        await resp.write(b"x" * min(left, 8192))
        left -= 8192
    await resp.write_eof()
    return resp


async def _gzip(request: web.Request) -> web.Response:
    raw = SMALL if request.query["size"] == "small" else b"\0" * int(request.query["size"])
    packed = gzip.compress(raw)
    return web.Response(body=packed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


RELEASE = web.AppKey("release", asyncio.Event)


async def _never(request: web.Request) -> web.Response:
    await request.app[RELEASE].wait()  # no answer until the server shuts down
    return web.Response(status=503)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/plain", _plain)
    app.router.add_post("/chunked", _chunked)
    app.router.add_post("/gzip", _gzip)
    app.router.add_post("/never", _never)
    app[RELEASE] = asyncio.Event()
    async with serving(app) as base:
        try:
            yield base
        finally:
            app[RELEASE].set()


async def _post(url: str) -> bytes:
    transport = AiohttpTransport(timeout=10, max_response_bytes=CAP)
    await transport.start()
    try:
        answer = await transport.post(TransportRequest(url, {"Content-Type": "application/json"}, b"{}"))
    finally:
        await transport.aclose()
    return answer.body


@pytest.mark.parametrize("path", ["plain", "chunked"])
async def test_an_answer_up_to_the_cap_is_read_whole(server: str, path: str) -> None:
    assert len(await _post(f"{server}/{path}?size={CAP}")) == CAP


@pytest.mark.parametrize("path", ["plain", "chunked"])
async def test_an_answer_over_the_cap_is_an_unknown_outcome(server: str, path: str) -> None:
    with pytest.raises(TransportError, match=f"over {CAP} bytes") as caught:
        await _post(f"{server}/{path}?size={CAP + 1}")
    assert caught.value.kind == "network"


async def test_a_small_gzip_answer_is_decompressed(server: str) -> None:
    assert await _post(f"{server}/gzip?size=small") == SMALL


async def test_a_gzip_bomb_with_a_small_content_length_stops_at_the_cap(server: str) -> None:
    """64 MiB of zeros are about 65 KB of gzip: its Content-Length is near the cap, the body
    behind it a thousand times the cap."""
    with pytest.raises(TransportError, match=f"over {CAP} bytes"):
        await _post(f"{server}/gzip?size={64 * CAP}")


async def test_a_requests_own_timeout_is_the_one_in_force(server: str) -> None:
    """The engine puts the timeout it counts on each request; the transport gives up by it
    (here 0.3 s against the transport's own 60 s: the test allows 20 s for a loaded machine)."""
    transport = AiohttpTransport(timeout=60)
    await transport.start()
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as caught:
            await transport.post(TransportRequest(f"{server}/never", {}, b"{}", timeout=0.3))
    finally:
        await transport.aclose()
    assert caught.value.kind == "timeout" and "0.3s" in str(caught.value)
    assert time.monotonic() - started < 20


async def test_the_engine_sends_each_request_with_the_timeout_it_counts() -> None:
    from idemsend import Engine, Job, RawResponse
    from idemsend._transport import MockTransport

    transport = MockTransport(lambda request: RawResponse(201, {}, b'{"id": "em_1"}'))
    async with Engine("http://provider.test/v1", key="w:{job_id}", transport=transport, timeout=7.5) as engine:
        await engine.send(Job("j1"), {"to": "a"})
    assert [r.timeout for r in transport.requests] == [7.5]
