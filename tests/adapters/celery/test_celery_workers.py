"""Real ``celery worker`` processes (``worker/probe.py``) on RabbitMQ and on Redis as broker:
the retry countdown, the failures Celery stores, one Engine per worker process, and a worker
killed mid-task. The conformance suite and the chaos run cover the rest with the
``adapters/celery_worker`` project."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery", reason="Celery is not installed here: it is tested in its own environment, nox -s celery")

from harness.queues.celery import rabbitmq_url
from idemsend.testing import MockProvider

from ._workers import BROKERS, ProbeWorkers, children

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.processes]


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="celery-key") as p:
        yield p


def broker_or_skip(broker: str) -> str:
    if broker == "rabbitmq":
        url, why = rabbitmq_url()
        if url is None:
            pytest.skip(why)
    return broker


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return broker_or_skip(request.param)


async def workers_for(broker: str, redis_url: str, provider: MockProvider, tmp_path: Path, **env: str) -> ProbeWorkers:
    logs = tmp_path / f"logs-{uuid.uuid4().hex[:4]}"
    logs.mkdir()
    return ProbeWorkers(broker, redis_url, provider, logs, **env)


def job() -> tuple[dict[str, Any], dict[str, Any], str]:
    tag = uuid.uuid4().hex[:8]
    return {"user_id": f"u-{tag}"}, {"to": [f"{tag}@example.com"], "template": "welcome"}, f"task-{tag}"


def key(data: dict[str, Any], task_id: str) -> str:
    return f"welcome:{data['user_id']}:{task_id}"


async def test_a_retry_waits_for_retry_after_under_the_same_task_id(
    broker: str, redis_url: str, provider: MockProvider, tmp_path: Path
) -> None:
    w = await workers_for(broker, redis_url, provider, tmp_path)
    try:
        await w.start(concurrency=2)
        data, body, task_id = job()
        provider.faults.retry_after = 3
        provider.script("429", "5xx", key=key(data, task_id))
        w.send(data, body, task_id)
        meta = await w.wait(task_id)
        assert meta["status"] == "SUCCESS", meta
        result = meta["result"]
        # self.retry kept the task id: one key at the provider, three tries, two retries
        assert result["job_id"] == result["task_id"] == task_id and result["retries"] == 2
        arrivals = provider.arrivals[key(data, task_id)]
        assert len(arrivals) == 3 and provider.sends_for(key(data, task_id)) == 1
        waited = arrivals[1] - arrivals[0]
        assert 3.0 <= waited < 15, f"the retry came {waited:.2f}s after a 429 with Retry-After: 3"
    finally:
        await w.stop()


async def test_a_fatal_error_is_a_failure_with_its_reason_and_no_retry(
    redis_url: str, provider: MockProvider, tmp_path: Path
) -> None:
    w = await workers_for("redis", redis_url, provider, tmp_path)
    try:
        await w.start()
        data, _, task_id = job()
        w.send(data, ["not", "an", "object"], task_id)  # the provider answers 422 VALIDATION_ERROR
        meta = await w.wait(task_id)
        assert meta["status"] == "FAILURE" and meta["retries"] == 0, meta
        failure = meta["result"]
        assert failure["exc_type"] == "SendFailed"
        message, code, retryable, maybe_sent = failure["exc_message"]
        assert code == "VALIDATION_ERROR" and retryable is False and "VALIDATION_ERROR" in message
        assert maybe_sent is False
        await asyncio.sleep(2.0)  # nothing runs it again: no retry, no requeue
        assert provider.stats.requests == 1 and len(provider.arrivals[key(data, task_id)]) == 1
        assert w.meta(task_id)["status"] == "FAILURE"  # type: ignore[index]
    finally:
        await w.stop()


async def test_the_last_retry_stores_the_real_reason(redis_url: str, provider: MockProvider, tmp_path: Path) -> None:
    w = await workers_for("redis", redis_url, provider, tmp_path, CELERY_MAX_RETRIES="2")
    try:
        await w.start()
        data, body, task_id = job()
        provider.script(*["5xx"] * 10, key=key(data, task_id))
        w.send(data, body, task_id)
        meta = await w.wait(task_id)
        assert meta["status"] == "FAILURE" and meta["retries"] == 2, meta
        message, _code, retryable, maybe_sent = meta["result"]["exc_message"]
        assert meta["result"]["exc_type"] == "SendFailed" and retryable is True
        assert maybe_sent is True  # 503s: the provider may have run it
        assert "HTTP 503" in message, message  # not Celery's "max retries exceeded"
        assert len(provider.arrivals[key(data, task_id)]) == 3 and provider.sends_for(key(data, task_id)) == 0
    finally:
        await w.stop()


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 4), ("solo", 1)])
async def test_one_engine_per_worker_process_across_many_tasks(
    pool: str, concurrency: int, redis_url: str, provider: MockProvider, tmp_path: Path
) -> None:
    w = await workers_for("redis", redis_url, provider, tmp_path)
    try:
        proc = await w.start(pool=pool, concurrency=concurrency)
        pool_pids = set(children(proc.pid))
        sent = [job() for _ in range(24)]
        for data, body, task_id in sent:
            w.send(data, body, task_id)
        results = [(await w.wait(task_id))["result"] for _, _, task_id in sent]
        assert all(r["state"] == "sent" for r in results)
        by_pid: dict[int, set[int]] = {}
        for r in results:
            assert r["engines_made"] == 1, r  # never one per task
            by_pid.setdefault(r["pid"], set()).add(r["engine"])
        assert all(len(engines) == 1 for engines in by_pid.values()), by_pid
        if pool == "prefork":
            assert set(by_pid) <= pool_pids and proc.pid not in by_pid  # in the pool processes only
        else:
            assert set(by_pid) == {proc.pid}
        await w.stop(proc)
        shutdowns = [json.loads(p.read_text()) for p in w.logs.glob("shutdown-*.json")]
        closed = {s["pid"]: s for s in shutdowns}
        for pid in by_pid:  # every process that sent closed its Engine on the shutdown signal
            assert pid in closed and "idle" in closed[pid]["engine"] and closed[pid]["engines_made"] == 1, closed
        if pool == "prefork":
            assert closed[proc.pid]["engines_made"] == 0  # the parent never made one
    finally:
        await w.stop()


async def test_a_pool_process_killed_mid_task_is_requeued_and_sent_once(
    broker: str, redis_url: str, provider: MockProvider, tmp_path: Path
) -> None:
    """``task_reject_on_worker_lost``: Celery requeues the task of a pool process that died
    (not FAILURE with WorkerLostError); the second run replays the first one's send."""
    w = await workers_for(broker, redis_url, provider, tmp_path)
    try:
        proc = await w.start(concurrency=1)
        data, body, task_id = job()
        provider.delay(key(data, task_id), 3.0)
        w.send(data, body, task_id)
        await wait_for(lambda: len(provider.arrivals.get(key(data, task_id), [])) >= 1)
        [child] = children(proc.pid)
        os.kill(child, 9)
        meta = await w.wait(task_id)
        assert meta["status"] == "SUCCESS", meta
        assert meta["result"]["replayed"] is True and meta["result"]["pid"] != child
        assert provider.sends_for(key(data, task_id)) == 1
    finally:
        await w.stop()


async def test_a_worker_killed_mid_task_is_redelivered_by_the_broker_and_sent_once(
    broker: str, redis_url: str, provider: MockProvider, tmp_path: Path
) -> None:
    """SIGKILL the whole worker: RabbitMQ redelivers when the connection drops; Redis once
    the message's visibility_timeout (10 s here) has passed."""
    w = await workers_for(broker, redis_url, provider, tmp_path)
    try:
        first = await w.start(concurrency=1)
        data, body, task_id = job()
        provider.delay(key(data, task_id), 3.0)
        w.send(data, body, task_id)
        await wait_for(lambda: len(provider.arrivals.get(key(data, task_id), [])) >= 1)
        await w.kill(first)
        assert children(first.pid) == []  # its pool process died with it
        await w.start(concurrency=1)
        meta = await w.wait(task_id)
        assert meta["status"] == "SUCCESS" and meta["result"]["replayed"] is True, meta
        assert provider.sends_for(key(data, task_id)) == 1
    finally:
        await w.stop()


async def wait_for(check: Any, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
