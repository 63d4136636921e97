"""The provider contract played out in time: ``play`` awaits an ``Exchange``'s steps (reads
the body when asked, sleeps its waits), and ``contract_transport`` serves a
``ProviderContract`` as a ``MockTransport``, so the engine meets the same provider as over
HTTP, without a socket. A send being processed is in flight while its wait is awaited, so
concurrent sends of one key see ``IDEMPOTENCY_IN_FLIGHT`` as they do at the MockProvider."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from .._transport import MockTransport, RawResponse, TransportError, TransportRequest
from ._contract import Exchange, ProviderAnswer, ProviderContract, ReadBody

__all__ = ["contract_transport", "play", "raw_response"]

Sleep = Callable[[float], Awaitable[None]]


async def play(
    exchange: Exchange, *, read: Callable[[], Awaitable[bytes]], sleep: Sleep = asyncio.sleep
) -> ProviderAnswer:
    """Run ``exchange`` to its answer: ``await read()`` for a ``ReadBody`` step, ``await
    sleep(seconds)`` for a ``Wait``. If a read or a sleep raises (a body too large, the
    request cancelled), the exchange is closed, so its counters are left as they were."""
    try:
        step = next(exchange)
        while True:
            if isinstance(step, ReadBody):
                step = exchange.send(await read())
            else:
                await sleep(step.seconds)
                step = exchange.send(None)
    except StopIteration as stop:
        answer: ProviderAnswer = stop.value
        return answer
    finally:
        exchange.close()


def raw_response(answer: ProviderAnswer) -> RawResponse:
    """``answer`` as the transport returns it: what aiohttp's ``json_response`` would write."""
    headers = {"Content-Type": "application/json; charset=utf-8", **answer.headers}
    return RawResponse(answer.status, headers, answer.content())


def contract_transport(contract: ProviderContract, *, sleep: Sleep = asyncio.sleep) -> MockTransport:
    """A ``MockTransport`` answering every POST from ``contract`` (routed by the URL's path),
    with its waits slept (``sleep``). A ``lost`` answer raises ``TransportError(kind="network")``,
    as a dropped connection does through ``AiohttpTransport``."""

    async def handler(request: TransportRequest) -> RawResponse:
        async def read() -> bytes:
            return request.body

        exchange = contract.exchange(urlsplit(request.url).path, request.headers)
        answer = await play(exchange, read=read, sleep=sleep)
        if answer.lost:
            raise TransportError("the provider dropped the connection before answering (fault 'lost')", kind="network")
        return raw_response(answer)

    return MockTransport(handler)
