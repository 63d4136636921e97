"""One table of scenarios, run against every queue's adapter with real workers, real Redis
and real HTTP to the MockProvider. Every adapter must give the same provider-side sends and
the same terminal state. The scenario x adapter table is printed at the end of the run.

The queues are the drivers in ``harness/queues/`` (a new queue's driver joins the table
with no edit here); the scenarios speak only the ``QueueDriver`` interface.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.queues import CONFORMANCE, QueueDriver, QueueJob, RunDir, Terminal, drivers
from harness.queues.base import wait_for_arrival
from idemsend.testing import MockProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.processes]

DRIVERS = drivers()
#: scenario -> adapter -> what was seen; printed by conftest's terminal summary
RESULTS: dict[str, dict[str, str]] = {}
#: log folders kept because a test failed; named in the terminal summary
KEPT_LOGS: list[Path] = []


@pytest.fixture(scope="module")
def run_dir(request: pytest.FixtureRequest) -> Iterator[RunDir]:
    failed_before = request.session.testsfailed
    logs = RunDir("conformance")
    yield logs
    kept = logs.finish(keep=request.session.testsfailed > failed_before)
    if kept is not None:
        KEPT_LOGS.append(kept)


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="conformance-key") as p:
        yield p


@pytest.fixture(scope="module", params=list(DRIVERS))
async def driver(
    request: pytest.FixtureRequest, provider: MockProvider, redis_url: str, run_dir: RunDir
) -> AsyncIterator[QueueDriver]:
    driver_class = DRIVERS[request.param]
    reason = driver_class.unavailable()
    if reason:
        pytest.skip(reason)
    async with driver_class(provider, redis_url, profile=CONFORMANCE, run_dir=run_dir) as made:
        yield made


@dataclass(frozen=True)
class Seen:
    terminal: str
    sends: int
    requests: int


@dataclass(frozen=True)
class Case:
    driver: QueueDriver
    provider: MockProvider
    job: QueueJob

    @property
    def key(self) -> str:
        return self.job.key

    def seen(self, terminal: Terminal | list[Terminal], key: str | None = None) -> Seen:
        key = key or self.key
        terminals = terminal if isinstance(terminal, list) else [terminal]
        return Seen(
            " + ".join(t.brief() for t in terminals),
            self.provider.sends_for(key),
            len(self.provider.arrivals.get(key, [])),
        )

    def changed(self, **data: Any) -> QueueJob:
        """The same job id with other data (so another key)."""
        return QueueJob(self.job.id, {**self.job.data, **data}, self.job.body)


async def s_success(c: Case) -> Seen:
    return c.seen(await c.driver.run(c.job))


async def s_twice_in_a_row(c: Case) -> Seen:
    first = await c.driver.run(c.job)
    second = await c.driver.run(c.job)
    assert first.state == second.state == "sent" and second.replayed
    return Seen("sent, then sent (replayed)", c.provider.sends_for(c.key), -1)


async def s_twice_at_once(c: Case) -> Seen:
    terminals = await c.driver.deliver_twice_at_once(c.job)
    assert all(t.state == "sent" for t in terminals)
    return Seen("sent", c.provider.sends_for(c.key), -1)


async def s_in_flight_then_success(c: Case) -> Seen:
    c.provider.script("in_flight", key=c.key)
    return c.seen(await c.driver.run(c.job))


async def s_mismatch(c: Case) -> Seen:
    # the key was used before with another body (the job payload changed mid-flight)
    headers = {"Authorization": f"Bearer {c.provider.api_key}", "Idempotency-Key": c.key}
    async with aiohttp.ClientSession() as s, s.post(c.provider.emails_url, json={"other": 1}, headers=headers) as r:
        assert r.status == 200
    return c.seen(await c.driver.run(c.job))


async def s_503_twice(c: Case) -> Seen:
    c.provider.script("5xx", "5xx", key=c.key)
    return c.seen(await c.driver.run(c.job))


async def s_429_retry_after(c: Case) -> Seen:
    c.provider.faults.retry_after = 2
    c.provider.script("429", key=c.key)
    try:
        terminal = await c.driver.run(c.job)
    finally:
        c.provider.faults.retry_after = 1
    arrivals = c.provider.arrivals[c.key]
    waited = arrivals[1] - arrivals[0]
    assert waited >= 1.95, f"the retry came {waited:.2f}s after a 429 with Retry-After: 2"
    return c.seen(terminal)


async def s_lost_response(c: Case) -> Seen:
    c.provider.script("lost", key=c.key)
    return c.seen(await c.driver.run(c.job))


async def s_unstable_key(c: Case) -> Seen:
    first = await c.driver.run(c.job)
    assert first.state == "sent"
    # the same job redelivered with a key field changed: a different key for one job id
    changed = c.changed(user_id=c.job.data["user_id"] + "-x")
    second = await c.driver.run(changed)
    assert c.provider.sends_for(changed.key) == 0 and changed.key not in c.provider.arrivals
    return c.seen(second)


async def s_invalid_key(c: Case) -> Seen:
    bad = c.changed(user_id="has a space")
    return c.seen(await c.driver.run(bad), key=bad.key)


async def s_worker_killed(c: Case) -> Seen:
    """Deliver, SIGKILL every worker while the send is at the provider, restart them, and
    let the queue redeliver in its own way."""
    c.provider.delay(c.key, 3.0)
    await c.driver.deliver(c.job)
    await wait_for_arrival(c.provider, c.key)
    await c.driver.kill_all()
    await c.driver.sweep_abandoned()
    await c.driver.start()
    return c.seen(await c.driver.wait(c.job.id))


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


def new_job(driver: QueueDriver) -> QueueJob:
    tag = uuid.uuid4().hex[:8]
    body = {"to": [f"{tag}@example.com"], "template": "welcome"}
    return QueueJob(f"{driver.name}-{tag}", {"user_id": f"u-{tag}"}, body)


@pytest.mark.parametrize(
    ("name", "scenario", "terminal", "sends", "requests"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
async def test_scenario(
    driver: QueueDriver, provider: MockProvider, name: str, scenario: Callable[[Case], Awaitable[Seen]],
    terminal: str, sends: int, requests: int,
) -> None:
    case = Case(driver, provider, new_job(driver))
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


async def test_retries_exhausted_record_the_last_reason(driver: QueueDriver, provider: MockProvider) -> None:
    """A job that never gets past 503 ends failed with the real reason, not silently."""
    job = new_job(driver)
    provider.script(*["5xx"] * 30, key=job.key)
    terminal = await driver.run(job)
    tries = len(provider.arrivals.get(job.key, []))
    reason = "HTTP 503" if "HTTP 503" in terminal.reason else terminal.reason[:40]
    RESULTS.setdefault("retries exhausted", {})[driver.name] = (
        f"{terminal.state} after {tries} tries ({reason}); sends {provider.sends_for(job.key)}"
    )
    assert terminal.state == "failed", driver.tail()
    assert "HTTP 503" in terminal.reason
    assert provider.sends_for(job.key) == 0
    assert tries >= 4  # the queue really retried


def conformance_table() -> str:
    adapters = list(DRIVERS)
    lines = ["| scenario | " + " | ".join(adapters) + " |", "|---|" + "---|" * len(adapters)]
    for name in [s[0] for s in SCENARIOS] + ["retries exhausted"]:
        row = RESULTS.get(name, {})
        lines.append(f"| {name} | " + " | ".join(row.get(a, "not run") for a in adapters) + " |")
    if KEPT_LOGS:
        lines.append("worker logs kept in: " + ", ".join(str(p) for p in KEPT_LOGS))
    return "\n".join(lines)


def dump_results(path: str) -> None:
    with open(path, "w") as f:
        json.dump(RESULTS, f, indent=2)
