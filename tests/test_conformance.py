"""One table of scenarios, run against every adapter with real workers, real Redis and
real HTTP to the MockProvider. Every adapter must give the same provider-side sends and
the same terminal state. The scenario x adapter table is printed at the end of the run."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from idemsend.testing import MockProvider

from .conformance.drivers import DRIVERS, Driver, Terminal

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: scenario -> adapter -> what was seen; printed by conftest's terminal summary
RESULTS: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="conformance-key") as p:
        yield p


@pytest.fixture(scope="module", params=list(DRIVERS))
async def driver(request: pytest.FixtureRequest, provider: MockProvider, redis_url: str) -> AsyncIterator[Driver]:
    made = DRIVERS[request.param](provider, redis_url)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


@dataclass(frozen=True)
class Seen:
    terminal: str
    sends: int
    requests: int


@dataclass(frozen=True)
class Case:
    driver: Driver
    provider: MockProvider
    job_id: str
    data: dict[str, Any]
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return f"welcome:{self.data['user_id']}:{self.job_id}"

    def seen(self, terminal: Terminal | list[Terminal], key: str | None = None) -> Seen:
        key = key or self.key
        terminals = terminal if isinstance(terminal, list) else [terminal]
        return Seen(
            " + ".join(t.brief() for t in terminals),
            self.provider.sends_for(key),
            len(self.provider.arrivals.get(key, [])),
        )


async def s_success(c: Case) -> Seen:
    return c.seen(await c.driver.run(c.job_id, c.data, c.body))


async def s_twice_in_a_row(c: Case) -> Seen:
    first = await c.driver.run(c.job_id, c.data, c.body)
    second = await c.driver.run(c.job_id, c.data, c.body)
    assert first.state == second.state == "sent" and second.replayed
    return Seen("sent, then sent (replayed)", c.provider.sends_for(c.key), -1)


async def s_twice_at_once(c: Case) -> Seen:
    terminals = await c.driver.run_twice_at_once(c.job_id, c.data, c.body)
    assert all(t.state == "sent" for t in terminals)
    return Seen("sent", c.provider.sends_for(c.key), -1)


async def s_in_flight_then_success(c: Case) -> Seen:
    c.provider.script("in_flight", key=c.key)
    return c.seen(await c.driver.run(c.job_id, c.data, c.body))


async def s_mismatch(c: Case) -> Seen:
    # the key was used before with another body (the job payload changed mid-flight)
    headers = {"Authorization": f"Bearer {c.provider.api_key}", "Idempotency-Key": c.key}
    async with aiohttp.ClientSession() as s, s.post(c.provider.emails_url, json={"other": 1}, headers=headers) as r:
        assert r.status == 200
    return c.seen(await c.driver.run(c.job_id, c.data, c.body))


async def s_503_twice(c: Case) -> Seen:
    c.provider.script("5xx", "5xx", key=c.key)
    return c.seen(await c.driver.run(c.job_id, c.data, c.body))


async def s_429_retry_after(c: Case) -> Seen:
    c.provider.faults.retry_after = 2
    c.provider.script("429", key=c.key)
    try:
        terminal = await c.driver.run(c.job_id, c.data, c.body)
    finally:
        c.provider.faults.retry_after = 1
    arrivals = c.provider.arrivals[c.key]
    waited = arrivals[1] - arrivals[0]
    assert waited >= 1.95, f"the retry came {waited:.2f}s after a 429 with Retry-After: 2"
    return c.seen(terminal)


async def s_lost_response(c: Case) -> Seen:
    c.provider.script("lost", key=c.key)
    return c.seen(await c.driver.run(c.job_id, c.data, c.body))


async def s_unstable_key(c: Case) -> Seen:
    first = await c.driver.run(c.job_id, c.data, c.body)
    assert first.state == "sent"
    # the same job redelivered with a key field changed: a different key for one job id
    changed = {**c.data, "user_id": c.data["user_id"] + "-x"}
    second = await c.driver.run(c.job_id, changed, c.body)
    changed_key = f"welcome:{changed['user_id']}:{c.job_id}"
    assert c.provider.sends_for(changed_key) == 0 and changed_key not in c.provider.arrivals
    return c.seen(second)


async def s_invalid_key(c: Case) -> Seen:
    bad = {**c.data, "user_id": "has a space"}
    terminal = await c.driver.run(c.job_id, bad, c.body)
    return c.seen(terminal, key=f"welcome:has a space:{c.job_id}")


async def s_worker_killed(c: Case) -> Seen:
    c.provider.delay(c.key, 3.0)
    terminal = await c.driver.run_killing_worker(c.job_id, c.data, c.body, c.key)
    return c.seen(terminal)


# scenario, function, expected terminal, expected sends at the provider, expected requests (-1: any)
SCENARIOS: list[tuple[str, Callable[[Case], Awaitable[Seen]], str, int, int]] = [
    ("success", s_success, "sent", 1, 1),
    ("same job twice, in a row", s_twice_in_a_row, "sent, then sent (replayed)", 1, -1),
    ("same job twice, at once", s_twice_at_once, "sent", 1, -1),
    ("IN_FLIGHT then success", s_in_flight_then_success, "sent", 1, 2),
    ("mismatch", s_mismatch, "fatal IDEMPOTENCY_MISMATCH", 1, 2),
    ("503 twice then success", s_503_twice, "sent", 1, 3),
    ("429 with Retry-After", s_429_retry_after, "sent", 1, 2),
    ("response lost after commit", s_lost_response, "sent (replayed)", 1, 2),
    ("unstable key", s_unstable_key, "fatal UNSTABLE_KEY", 1, 1),
    ("invalid key", s_invalid_key, "fatal KEY_DERIVATION", 0, 0),
    ("worker killed mid-send", s_worker_killed, "sent (replayed)", 1, -1),
]


@pytest.mark.parametrize(
    ("name", "scenario", "terminal", "sends", "requests"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
async def test_scenario(
    driver: Driver, provider: MockProvider, name: str, scenario: Callable[[Case], Awaitable[Seen]],
    terminal: str, sends: int, requests: int,
) -> None:
    tag = uuid.uuid4().hex[:8]
    case = Case(
        driver, provider, job_id=f"{driver.name}-{tag}", data={"user_id": f"u-{tag}"},
        body={"to": [f"{tag}@example.com"], "template": "welcome"},
    )
    start = time.monotonic()
    try:
        seen = await scenario(case)
    except BaseException as exc:
        RESULTS.setdefault(name, {})[driver.name] = f"ERROR {type(exc).__name__}"
        raise AssertionError(f"{name} on {driver.name}: {exc!r}\nworker log:\n{driver.tail()}") from exc
    RESULTS.setdefault(name, {})[driver.name] = (
        f"{seen.terminal}; sends {seen.sends}" + (f"; requests {seen.requests}" if requests >= 0 else "")
        + f" ({time.monotonic() - start:.1f}s)"
    )
    assert seen.terminal == terminal, f"{driver.name}: {seen}"
    assert seen.sends == sends, f"{driver.name}: {seen}"
    if requests >= 0:
        assert seen.requests == requests, f"{driver.name}: {seen}"


async def test_retries_exhausted_record_the_last_reason(driver: Driver, provider: MockProvider) -> None:
    """A job that never gets past 503 ends failed with the real reason, not silently."""
    tag = uuid.uuid4().hex[:8]
    job_id, data = f"{driver.name}-{tag}", {"user_id": f"u-{tag}"}
    key = f"welcome:u-{tag}:{job_id}"
    provider.script(*["5xx"] * 30, key=key)
    terminal = await driver.run(job_id, data, {"to": ["x@example.com"]})
    RESULTS.setdefault("retries exhausted", {})[driver.name] = (
        f"{terminal.state} after {len(provider.arrivals.get(key, []))} tries"
        f" ({'HTTP 503' if 'HTTP 503' in terminal.reason else terminal.reason[:40]}); sends {provider.sends_for(key)}"
    )
    assert terminal.state == "failed"
    assert "HTTP 503" in terminal.reason
    assert provider.sends_for(key) == 0
    assert len(provider.arrivals[key]) >= 4  # the queue really retried


def conformance_table() -> str:
    adapters = list(DRIVERS)
    lines = ["| scenario | " + " | ".join(adapters) + " |", "|---|" + "---|" * len(adapters)]
    for name in [s[0] for s in SCENARIOS] + ["retries exhausted"]:
        row = RESULTS.get(name, {})
        lines.append(f"| {name} | " + " | ".join(row.get(a, "not run") for a in adapters) + " |")
    return "\n".join(lines)


def dump_results(path: str) -> None:
    with open(path, "w") as f:
        json.dump(RESULTS, f, indent=2)
