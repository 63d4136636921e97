"""Real ``dramatiq`` CLI workers (``adapters/dramatiq_worker``, through the harness driver)
on RabbitMQ and on Redis as broker: fatal outcomes and messages without a usable id are
dead-lettered and never retried, a stopped worker finishes the send it runs, and the
refusals stop the CLI at start. The conformance suite and the chaos run cover the rest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

pytest.importorskip("dramatiq", reason="Dramatiq is not installed here: nox -s dramatiq tests it")

from harness.queues import CONFORMANCE, QueueJob, RunDir
from harness.queues.base import db_url, wait_for_arrival
from harness.queues.dramatiq import DramatiqDriver, DramatiqRedisDriver
from idemsend.testing import MockProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.processes]

DRIVERS = {"rabbitmq": DramatiqDriver, "redis": DramatiqRedisDriver}
PROBE = Path(__file__).resolve().parent / "worker"


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="dramatiq-key") as p:
        yield p


@pytest.fixture(scope="module", params=list(DRIVERS))
async def driver(
    request: pytest.FixtureRequest, provider: MockProvider, redis_url: str
) -> AsyncIterator[DramatiqDriver]:
    cls = DRIVERS[request.param]
    reason = cls.unavailable()
    if reason:
        pytest.skip(reason)
    logs = RunDir("dramatiq-workers")
    failed = False
    try:
        async with cls(provider, redis_url, profile=CONFORMANCE, run_dir=logs, workers=1) as made:
            yield made
    except BaseException:
        failed = True
        raise
    finally:
        logs.finish(keep=failed)


def job(tag: str = "") -> QueueJob:
    tag = tag or uuid.uuid4().hex[:8]
    return QueueJob(f"job-{tag}", {"user_id": f"u-{tag}"}, {"to": [f"{tag}@example.com"], "template": "welcome"})


async def test_a_fatal_error_is_dead_lettered_and_never_retried(driver: DramatiqDriver, provider: MockProvider) -> None:
    before = await driver.dead_letters()
    j = job()
    # the key was used before with another body: the provider answers 422, a fatal mismatch
    headers = {"Authorization": f"Bearer {provider.api_key}", "Idempotency-Key": j.key}
    async with aiohttp.ClientSession() as s, s.post(provider.emails_url, json={"other": 1}, headers=headers) as r:
        assert r.status == 200
    ended = await driver.run(j)
    assert ended.state == "fatal" and ended.code == "IDEMPOTENCY_MISMATCH", ended
    assert len(provider.arrivals[j.key]) == 2  # the first body's, then the job's one try: never retried
    await _until(lambda: driver.dead_letters(), before + 1)


@pytest.mark.parametrize("bad", ["", "x" * 2000, "a\x00b"], ids=["empty", "too-long", "nul"])
async def test_a_message_without_a_usable_id_is_dead_lettered_never_sent(
    driver: DramatiqDriver, provider: MockProvider, bad: str
) -> None:
    before = await driver.dead_letters()
    j = job()
    await driver.enqueue_raw(j, bad)
    ended = await driver.wait(bad)
    assert ended.state == "fatal" and ended.code == "INVALID_JOB_ID", ended
    await _until(lambda: driver.dead_letters(), before + 1)
    assert not any(key.startswith(f"welcome:{j.data['user_id']}:") for key in provider.arrivals)
    assert "dead-lettered, never sent" in driver.tail(20000)


async def test_a_stopped_worker_finishes_the_send_it_runs(driver: DramatiqDriver, provider: MockProvider) -> None:
    j = job()
    provider.delay(j.key, 2.0)
    await driver.deliver(j)
    await wait_for_arrival(provider, j.key)
    for proc in driver.procs:
        proc.terminate()  # SIGTERM: the CLI stops its worker, which waits for the running actor
    codes = [await asyncio.to_thread(proc.wait, 60) for proc in driver.procs]
    assert codes == [0], driver.tail()
    ended = await driver.wait(j.id)
    assert ended.state == "sent" and not ended.replayed and provider.sends_for(j.key) == 1
    await driver.start()  # the module's next test gets a worker again


async def _until(read: object, wanted: int, tries: int = 200) -> None:
    got = None
    for _ in range(tries):
        got = await read()  # type: ignore[operator]
        if got >= wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"dead letters: {got}, wanted {wanted}")


@pytest.mark.parametrize("mode", ["no-retries", "late"])  # refused when the adapter is made; at worker boot
def test_a_broker_without_retries_stops_the_worker_at_start(redis_url: str, mode: str) -> None:
    tag = uuid.uuid4().hex[:6]
    env = {
        **os.environ, "PYTHONPATH": f"{PROBE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PROBE_MODE": mode, "DRAMATIQ_BROKER_URL": db_url(redis_url, 5), "DRAMATIQ_NAMESPACE": f"probe-{tag}",
        "DRAMATIQ_QUEUE": f"probe-{tag}", "IDEMSEND_URL": "http://127.0.0.1:9/emails",
    }
    out = subprocess.run([sys.executable, "-m", "dramatiq", "probe", "--processes", "1", "--threads", "1"],
                         cwd=PROBE, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stderr[-3000:]
    assert "no Retries middleware" in out.stderr, out.stderr[-3000:]
