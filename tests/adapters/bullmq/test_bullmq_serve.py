"""``BullMQAdapter.serve`` with a real ``bullmq.Worker``: a Redis that cannot be reached at
start is a RuntimeError within seconds (not a worker retrying forever), and a ``serve`` that
stops at once leaves no Redis client of BullMQ's open (counted on the real Redis)."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("bullmq", reason="bullmq needs redis-py >= 6.2: run these in its own environment (nox -s bullmq)")

import redis.asyncio as aioredis

from idemsend import ConfigError, Engine
from idemsend.adapters.bullmq import BullMQAdapter
from idemsend.testing import MockProvider

pytestmark = pytest.mark.anyio


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="bullmq-key") as p:
        yield p


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port


def adapter_for(provider: MockProvider) -> BullMQAdapter:
    return BullMQAdapter(lambda: Engine(provider.emails_url, key="welcome:{user_id}:{job_id}", api_key="bullmq-key"))


async def test_serve_raises_when_redis_is_unreachable_at_start(provider: MockProvider, closed_port: int) -> None:
    adapter = adapter_for(provider)
    url = f"redis://worker:s3cret-pw@127.0.0.1:{closed_port}/0"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot reach Redis") as raised:
        await asyncio.wait_for(adapter.serve("emails", adapter.send, {"connection": url}, stop=asyncio.Event()), 60)
    assert time.monotonic() - started < 30  # the default bound is 10 s
    assert f"127.0.0.1:{closed_port}" in str(raised.value) and "s3cret-pw" not in str(raised.value)
    with pytest.raises(ConfigError):
        adapter.engine  # noqa: B018  (closed again)


async def test_serve_checks_its_connect_timeout() -> None:
    adapter = BullMQAdapter(lambda: Engine("https://api.example.com/v1/emails", key="k:{job_id}", api_key="k-1"))
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="connect_timeout"):
            await adapter.serve("emails", adapter.send, {}, stop=asyncio.Event(), connect_timeout=bad)


async def bullmq_clients(probe: Any, queue: str) -> list[dict[str, Any]]:
    return [c for c in await probe.client_list() if c.get("name", "").endswith(f":{queue}")]


async def test_a_serve_stopped_at_once_leaves_no_redis_client_open(provider: MockProvider, redis_url: str) -> None:
    queue = f"serve-{uuid.uuid4().hex[:8]}"
    probe = aioredis.from_url(redis_url, decode_responses=True)
    unclosed: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unclosed.append(str(context.get("message"))))
    gc.disable()  # a leaked client must not be closed by the collector before it is counted
    try:
        for _ in range(3):
            adapter = adapter_for(provider)
            stop = asyncio.Event()
            stop.set()
            await asyncio.wait_for(adapter.serve(queue, adapter.send, {"connection": redis_url}, stop=stop), 60)
        deadline = time.monotonic() + 10
        while (left := await bullmq_clients(probe, queue)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the server's view of a close may lag it a little
        assert left == [], [(c["name"], c["cmd"]) for c in left]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.enable()
            gc.collect()
        assert [str(w.message)[:60] for w in caught if "nclosed" in str(w.message)] == []
        assert unclosed == []
    finally:
        gc.enable()
        loop.set_exception_handler(None)
        await probe.aclose()
