"""The contract served two ways gives the same answers: over real HTTP by the MockProvider
(through ``AiohttpTransport``) and without a socket by ``contract_transport`` (a
``MockTransport``); and the engine runs on the socket-free one as on the server."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from idemsend import AiohttpTransport, Engine, Job, RawResponse, TransportError, TransportRequest
from idemsend.testing import Faults, MockProvider, ProviderContract, contract_transport

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": "Bearer test-api-key", "Content-Type": "application/json"}
Post = Callable[[TransportRequest], Awaitable[RawResponse]]


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def outcome(answer: RawResponse | TransportError) -> tuple[Any, ...]:
    """What a client sees of an answer: status, JSON body, the contract's headers; or the error's kind."""
    if isinstance(answer, TransportError):
        return ("error", answer.kind)
    headers = {name: answer.headers[name] for name in ("Idempotent-Replayed", "Retry-After") if name in answer.headers}
    return (answer.status, json.loads(answer.body), headers)


async def scenario(base: str, post: Post, clock: Clock, provider: Any) -> list[tuple[Any, ...]]:
    """Every documented answer, in one sequence, with the provider's counters at the end."""

    async def send(body: Any, key: str | None = "k1", *, path: str = "/api/v1/emails", **headers: str) -> None:
        h = {**AUTH, **headers}
        if key is not None:
            h["Idempotency-Key"] = key
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            seen.append(outcome(await post(TransportRequest(base + path, h, raw))))
        except TransportError as exc:
            seen.append(outcome(exc))

    seen: list[tuple[Any, ...]] = []
    await send({"to": ["a"]})  # first send
    await send({"to": ["a"]})  # replay
    await send({"to": ["b"]})  # mismatch
    provider.script("5xx", "429", "in_flight", None, "lost")
    for n in range(5):
        await send({"n": n}, key=f"f{n}")
    await send({"n": 4}, key="f4")  # the lost send's replay
    clock.now += 24 * 3600
    await send({"to": ["a"]})  # after the window: sent again
    await send({"to": []}, Authorization="Bearer nope")
    await send(b"{", key="bad-json")
    await send([1, 2], key="not-an-object")
    await send({"to": []}, key="x" * 256)
    await send([{"to": ["a"]}], path="/api/v1/emails/batch")
    await send([{"to": ["a"]}, {"to": ["b"]}], key=None, path="/api/v1/emails/batch")
    provider.faults = Faults(rate_5xx=0.3, rate_429=0.2, rate_lost=0.2, retry_after=2.5)
    for n in range(12):
        await send({"r": n}, key=f"r{n}")
    provider.faults = Faults()
    provider.processing_delay = 0.3
    first = asyncio.ensure_future(send({"to": ["slow"]}, key="slow"))
    await asyncio.sleep(0.1)
    await send({"to": ["slow"]}, key="slow")  # in flight while the first is processing
    await first
    snapshot = provider.snapshot()
    arrivals = {key: len(times) for key, times in snapshot.pop("arrivals").items()}
    return [*seen, ("stats", snapshot, arrivals)]


async def test_the_mock_provider_and_the_mock_transport_answer_a_scenario_alike() -> None:
    http_clock, local_clock = Clock(), Clock()
    async with MockProvider(clock=http_clock, seed=7) as server:
        transport = AiohttpTransport(timeout=5)
        await transport.start()
        try:
            over_http = await scenario(server.url, transport.post, http_clock, server)
        finally:
            await transport.aclose()
    contract = ProviderContract(clock=local_clock, draw=random.Random(7).random)
    socket_free = await scenario("https://api.example.com", contract_transport(contract).post, local_clock, contract)
    assert socket_free == over_http
    statuses = [row[0] for row in over_http]
    assert {200, 401, 400, 409, 422, 429, 503, "error"} <= set(statuses)  # the scenario reaches every answer


async def test_concurrent_sends_of_one_key_are_in_flight_while_the_sleep_is_pending() -> None:
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await gate.wait()

    contract = ProviderContract(processing_delay=5.0)
    post = contract_transport(contract, sleep=sleep).post
    request = TransportRequest("https://api.example.com/api/v1/emails", {**AUTH, "Idempotency-Key": "k"}, b"{}")
    first = asyncio.ensure_future(post(request))
    await asyncio.sleep(0)
    second = await post(request)
    assert second.status == 409 and json.loads(second.body)["error"]["code"] == "IDEMPOTENCY_IN_FLIGHT"
    gate.set()
    assert (await first).status == 200 and contract.sends == 1


async def test_a_cancelled_send_leaves_the_counters_as_the_server_does() -> None:
    contract = ProviderContract(processing_delay=30.0)
    post = contract_transport(contract).post
    request = TransportRequest("https://api.example.com/api/v1/emails", {**AUTH, "Idempotency-Key": "k"}, b"{}")
    task = asyncio.ensure_future(post(request))
    await asyncio.sleep(0.01)
    assert contract.stats.concurrency == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert contract.stats.concurrency == 0 and contract.sends == 0


async def test_the_engine_runs_on_the_contract_without_a_socket() -> None:
    contract = ProviderContract()
    contract.script("lost", "5xx", key="welcome:u1:job-1")
    async with Engine(
        "https://api.example.com/api/v1/emails", key="welcome:{user_id}:{job_id}", api_key="test-api-key",
        transport=contract_transport(contract), retry=3,
    ) as engine:
        job = Job("job-1", {"user_id": "u1"})
        result = await engine.send(job, {"to": ["ada@example.com"]})
        again = await engine.send(job, {"to": ["ada@example.com"]})
    # lost (sent, answer dropped), 503, then the stored answer
    assert result.replayed and result.attempts == 3 and result.id == "em_00000001"
    assert again.replayed and contract.sends == 1 and len(contract.arrivals["welcome:u1:job-1"]) == 4
