"""Real ``bullmq`` workers (``adapters/bullmq_worker``) on a real Redis, through the harness
driver: retries wait as long as the provider asked, fatal and last-try failures keep the
real reason, a killed worker's job comes back through BullMQ's stalled-job check and is
sent once, and SIGTERM lets a send in flight finish.

Timing: every wait polls for its condition with a generous deadline; the only lower bounds
asserted are the provider's own Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

pytest.importorskip("bullmq", reason="bullmq needs redis-py >= 6.2: run these in its own environment (nox -s bullmq)")

from harness.queues import CONFORMANCE, QueueJob, RunDir
from harness.queues.base import poll, wait_for_arrival
from harness.queues.bullmq import BullMQDriver
from idemsend.testing import MockProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.processes]

TRIES = 4
PROFILE = replace(CONFORMANCE, name="bullmq-workers", max_tries=TRIES)


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="bullmq-key") as p:
        yield p


@pytest.fixture
async def driver(provider: MockProvider, redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[BullMQDriver]:
    failed_before = request.session.testsfailed
    logs = RunDir("bullmq-workers")
    made = BullMQDriver(provider, redis_url, profile=PROFILE, run_dir=logs)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()
        logs.finish(keep=request.session.testsfailed > failed_before)


def new_job() -> QueueJob:
    tag = uuid.uuid4().hex[:8]
    return QueueJob(f"bullmq-{tag}", {"user_id": f"u-{tag}"}, {"to": [f"{tag}@example.com"], "template": "welcome"})


async def job_info(driver: BullMQDriver, job_id: str) -> tuple[str, Any, list[dict[str, Any]]]:
    """BullMQ's state of the job, the job as BullMQ reads it, and its log rows."""
    job = await driver.queue.getJob(job_id)
    logs = await driver.queue.getJobLogs(job_id)
    return await driver.queue.getJobState(job_id), job, [json.loads(row) for row in logs["logs"]]


@pytest.mark.parametrize("added_with", ["job_options", "a built-in 10 ms backoff"])
async def test_a_retry_runs_no_earlier_than_retry_after(
    driver: BullMQDriver, provider: MockProvider, added_with: str,
) -> None:
    job = new_job()
    provider.faults.retry_after = 3
    provider.script("429", key=job.key)
    if added_with == "job_options":
        assert await driver.deliver(job)
    else:  # a producer that knows nothing of idemsend: BullMQ alone would retry after 10 ms
        await driver.queue.add("send_email", {"data": job.data, "body": job.body},
                               {"jobId": job.id, "attempts": 3, "backoff": {"type": "fixed", "delay": 10}})
    terminal = await driver.wait(job.id)
    assert terminal.state == "sent", driver.tail()
    first, second = provider.arrivals[job.key]
    assert second - first >= 3.0, f"the retry came {second - first:.3f}s after a 429 with Retry-After: 3"
    state, bull_job, logs = await job_info(driver, job.id)
    assert state == "completed" and bull_job.attemptsMade == 2  # one failed try, then the send
    assert logs[0]["idemsend"] == "retrying" and logs[0]["delay"] == 3 and logs[0]["reason"] == "provider"
    assert logs[0]["detail"] == "HTTP 429"
    assert provider.sends_for(job.key) == 1


async def test_a_fatal_error_fails_the_job_at_once_with_its_reason(
    driver: BullMQDriver, provider: MockProvider,
) -> None:
    job = new_job()
    # the key was used before with another body: IDEMPOTENCY_MISMATCH, which no retry can fix
    headers = {"Authorization": f"Bearer {provider.api_key}", "Idempotency-Key": job.key}
    async with aiohttp.ClientSession() as s, s.post(provider.emails_url, json={"other": 1}, headers=headers) as r:
        assert r.status == 200
    terminal = await driver.run(job)
    assert (terminal.state, terminal.code) == ("fatal", "IDEMPOTENCY_MISMATCH"), driver.tail()
    state, bull_job, logs = await job_info(driver, job.id)
    assert state == "failed" and bull_job.attemptsMade == 1  # its attempts left (3) unused
    assert bull_job.failedReason.startswith("IDEMPOTENCY_MISMATCH: ")
    assert [row["idemsend"] for row in logs] == ["fatal"]
    assert len(provider.arrivals[job.key]) == 2 and provider.sends_for(job.key) == 1  # ours and the one try


async def test_the_last_attempt_keeps_the_real_reason(driver: BullMQDriver, provider: MockProvider) -> None:
    job = new_job()
    provider.script(*["5xx"] * 10, key=job.key)
    terminal = await driver.run(job)
    assert terminal.state == "failed" and "HTTP 503" in terminal.reason, driver.tail()
    state, bull_job, logs = await job_info(driver, job.id)
    assert state == "failed" and bull_job.attemptsMade == TRIES
    assert "HTTP 503" in bull_job.failedReason and "attempts" not in bull_job.failedReason
    assert [row["idemsend"] for row in logs] == ["retrying"] * (TRIES - 1) + ["failed"]
    assert len(provider.arrivals[job.key]) == TRIES and provider.sends_for(job.key) == 0


async def test_a_killed_workers_job_comes_back_through_the_stalled_check_and_is_sent_once(
    driver: BullMQDriver, provider: MockProvider,
) -> None:
    job = new_job()
    provider.delay(job.key, 3.0)
    assert await driver.deliver(job)
    await wait_for_arrival(provider, job.key)
    await driver.kill_all()  # mid-send: the job stays active, under a lock nobody renews
    await driver.start()  # fresh workers; their stalled-job checks find the lapsed lock
    terminal = await driver.wait(job.id)
    assert (terminal.state, terminal.replayed) == ("sent", True), driver.tail()
    state, bull_job, _ = await job_info(driver, job.id)
    assert state == "completed" and bull_job.stalledCounter == 1 and bull_job.attemptsStarted == 2
    assert bull_job.attemptsMade == 1  # a run cut short by a dead worker is not an attempt
    assert provider.sends_for(job.key) == 1


async def test_sigterm_lets_the_send_in_flight_finish(driver: BullMQDriver, provider: MockProvider) -> None:
    job = new_job()
    provider.delay(job.key, 2.0)
    assert await driver.deliver(job)
    await wait_for_arrival(provider, job.key)
    for proc in driver.procs:
        proc.send_signal(signal.SIGTERM)
    codes = [await asyncio.to_thread(proc.wait, 60) for proc in driver.procs]
    assert codes == [0] * len(codes), driver.tail()

    async def ended() -> str | None:
        state = await driver.queue.getJobState(job.id)
        return state if state in ("completed", "failed") else None

    assert await poll(ended, 10, f"job {job.id} to end") == "completed"
    _, bull_job, _ = await job_info(driver, job.id)
    assert bull_job.stalledCounter == 0 and provider.sends_for(job.key) == 1
    driver.procs = []
