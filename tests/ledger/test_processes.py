"""Ledgers across real worker processes, a SIGKILL, and a store stopped or restarted.

Written against a ``Store`` (tests/ledger/conftest.py): a URL for ``ledger_from_url``
plus stop/start/restart of a server the test owns, so another store runs them too.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from idemsend import Engine, Job, Limits, RetryableError, RetryPolicy
from idemsend.testing import MockProvider

from .conftest import Store

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).resolve().parents[1] / "workers" / "send_jobs.py"


async def start_worker(p: MockProvider, store: Store, prefix: str, *args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "--url", p.emails_url, *store.worker_args(), "--prefix", prefix, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"started", line
    return proc


async def summary(proc: asyncio.subprocess.Process) -> dict[str, int]:
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@pytest.mark.processes
async def test_several_processes_send_the_same_1000_jobs_once_each(shared_store: Store) -> None:
    prefix = f"p{uuid.uuid4().hex[:16]}"  # a valid Postgres table prefix too
    async with MockProvider(processing_delay=0.001) as p:
        procs = [
            await start_worker(p, shared_store, prefix, "--jobs", "1000", "--concurrency", "50") for _ in range(4)
        ]
        results = [await summary(proc) for proc in procs]
    assert p.sends == 1000
    assert not p.double_sends()
    assert sum(r["sent"] for r in results) == 1000
    assert sum(r["sent"] + r["replayed"] + r["from_ledger"] for r in results) == 4000
    assert sum(r["fatal"] for r in results) == 0


@pytest.mark.processes
async def test_worker_killed_between_claim_and_complete_is_resumed_once(shared_store: Store) -> None:
    prefix = f"p{uuid.uuid4().hex[:16]}"  # a valid Postgres table prefix too
    async with MockProvider(processing_delay=1.5) as p:
        victim = await start_worker(p, shared_store, prefix, "--lease", "1.0")
        deadline = time.monotonic() + 20
        while p.stats.requests < 1:  # claimed, and the POST is at the provider
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        assert victim.returncode == -signal.SIGKILL
        ledger = shared_store.ledger(prefix=prefix)
        record = await ledger.get("welcome:u0:job-0")
        await ledger.aclose()
        assert record is not None and record.state == "in_flight"
        # the redelivered job runs with a drifted body: the frozen first body is what goes out
        survivor = await start_worker(p, shared_store, prefix, "--lease", "1.0", "--body-tag", "v2")
        result = await summary(survivor)
    assert p.sends == 1 and p.sends_for("welcome:u0:job-0") == 1
    assert p.stats.mismatches == 0
    assert result["replayed"] == 1 and result["fatal"] == 0
    assert p.stats.requests >= 2


async def test_store_stopped_mid_run_fails_closed_and_loses_nothing(own_store: Callable[..., Store]) -> None:
    store = own_store(persistent=True)
    jobs = [Job(f"job-{i}", {"user_id": f"u{i}"}) for i in range(300)]
    done: dict[str, Any] = {}
    errors: list[RetryableError] = []
    async with MockProvider(processing_delay=0.005) as p:
        ledger = store.ledger(socket_timeout=2)
        async with Engine(
            p.emails_url, key="welcome:{user_id}:{job_id}", api_key=p.api_key, ledger=ledger,
            lease=1.0, limits=Limits(max_in_flight=20), retry=RetryPolicy(backoff=0.01),
        ) as e:

            async def deliver(job: Job) -> None:
                try:
                    done[job.id] = await e.send(job, {"to": [job.data["user_id"]]})
                except RetryableError as exc:
                    errors.append(exc)

            async def queue_worker(todo: list[Job]) -> None:  # a queue with 20 workers
                while todo:
                    await deliver(todo.pop())

            todo = list(jobs)
            first = asyncio.gather(*(queue_worker(todo) for _ in range(20)))
            while len(done) < 60:
                await asyncio.sleep(0.005)
            store.stop()  # the store goes away mid-run
            await first
            assert errors, "some sends must have met the stopped store"
            assert all(err.reason == "ledger" or "ledger" in str(err) for err in errors)
            sent_while_down = p.sends
            store.start()  # same address, same data
            # the queue redelivers what did not finish, until everything has
            for _ in range(20):
                missing = [j for j in jobs if j.id not in done]
                if not missing:
                    break
                errors.clear()
                await asyncio.gather(*(deliver(j) for j in missing))
                if errors:
                    await asyncio.sleep(0.3)
        assert len(done) == 300
        assert p.sends == 300 and not p.double_sends()
        assert sent_while_down < 300
        check = store.ledger()
        records = {key: await check.get(key) for key in p.sends_by_key}
        # every send the provider executed had been claimed in the ledger first
        assert all(r is not None for r in records.values())
        # a send whose completion met the stopped store stays in flight (an unknown
        # outcome to the ledger); a redelivery resumes it and the provider replays it
        unfinished = [k for k, r in records.items() if r is not None and r.state == "in_flight"]
        assert all(r is not None and r.state in ("done", "in_flight") for r in records.values())
        if unfinished:
            key = unfinished[0]
            job = next(j for j in jobs if f"welcome:{j.data['user_id']}:{j.id}" == key)
            await asyncio.sleep(1.1)  # the lease of the lost completion runs out
            async with Engine(
                p.emails_url, key="welcome:{user_id}:{job_id}", api_key=p.api_key, ledger=check, lease=1.0
            ) as again:
                result = await again.send(job, {"to": [job.data["user_id"]]})
            assert result.replayed and p.sends == 300
            check = store.ledger()
            record = await check.get(key)
            assert record is not None and record.state == "done"
        await check.aclose()


async def test_store_restarted_without_persistence_mid_send_keeps_the_send_recorded(
    own_store: Callable[..., Store],
) -> None:
    """The store restarts empty while a send is at the provider: the completion finds no
    record, writes the done record anew ("recreated"), and a replay after the provider's
    window is answered from the ledger instead of being sent again."""
    store = own_store(persistent=False)  # a restart forgets everything
    now = [time.time()]
    job, body, key = Job("j1", {"user_id": "u1"}), {"to": ["ada@example.com"]}, "welcome:u1:j1"
    async with MockProvider(clock=lambda: now[0]) as p:
        p.delay(key, 1.0)
        ledger = store.ledger(socket_timeout=2)
        async with Engine(
            p.emails_url, key="welcome:{user_id}:{job_id}", api_key=p.api_key, ledger=ledger, lease=5.0,
        ) as e:
            task = asyncio.ensure_future(e.send(job, body))
            deadline = time.monotonic() + 10
            while p.stats.requests < 1:  # claimed, and the POST is at the provider
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            store.restart()  # same address, nothing kept
            sent = await task
            record = await ledger.get(key)
            assert record is not None and record.state == "done" and record.response is not None
            assert record.response["id"] == sent.id
            now[0] += 25 * 3600  # the provider has forgotten the key
            again = await e.send(job, body)
        assert again.from_ledger and again.id == sent.id
        assert p.sends == 1 and not p.double_sends()


async def test_settle_answers_after_a_restart_without_persistence(own_store: Callable[..., Store]) -> None:
    """After the store lost a record: complete recreates it, the others say "missing"."""
    store = own_store(persistent=False)
    ledger = store.ledger(socket_timeout=2)
    for key in ("a", "b"):
        await ledger.claim(key=key, job_id=f"job-{key}", payload=b"{}", fingerprint="fp", token="tok", lease=30)
    store.restart()
    assert await ledger.renew(key="a", token="tok", lease=30) == "missing"  # reconnected (Redis: scripts reloaded)
    assert await ledger.release(key="a", token="tok") == "missing"
    assert await ledger.fail(key="a", token="tok", code="X", message="y") == "missing"
    assert await ledger.get("a") is None
    assert await ledger.complete(key="b", token="tok", response={"id": "em_1"}) == "recreated"
    record = await ledger.get("b")
    assert record is not None and record.state == "done" and record.response == {"id": "em_1"}
    await ledger.aclose()
