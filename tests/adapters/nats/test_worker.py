"""The ``adapters/nats_worker`` project as real worker processes: a worker SIGKILLed mid-send
leaves its message unacknowledged, JetStream redelivers it after ``ack_wait`` to the next
worker, and the ledger answers it from the first send (one send at the provider); SIGTERM
drains (the running send finishes and is acked)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idemsend.testing import MockProvider

from .conftest import KEY, Stream, job, needs_nats, until

needs_nats()

pytestmark = [pytest.mark.anyio, pytest.mark.processes, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[3] / "adapters" / "nats_worker"


class Workers:
    """Worker processes of one test, each logging to its own file; all killed at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "worker.py"], cwd=PROJECT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(provider: MockProvider, stream: Stream, nats_url: str, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{PROJECT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "IDEMSEND_URL": provider.emails_url, "IDEMSEND_API_KEY": "nats-key", "IDEMSEND_KEY": KEY,
        "IDEMSEND_LEDGER_URL": redis_url, "IDEMSEND_LEDGER_PREFIX": f"nats-worker-{tag}", "IDEMSEND_RETRIES": "0",
        "IDEMSEND_LEASE": "2", "NATS_URL": nats_url, "NATS_STREAM": stream.name, "NATS_DURABLE": stream.durable,
        "NATS_ACK_WAIT": "3", "NATS_FETCH_WAIT": "1", "NATS_SHUTDOWN_TIMEOUT": "20", "NATS_RESULTS_URL": redis_url,
        "NATS_RESULTS_PREFIX": f"nats-worker-results-{tag}:",
    }
    made = Workers(env, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


async def _result(redis_url: str, prefix: str, seq: int) -> dict[str, Any] | None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        raw = await redis.get(f"{prefix}{seq}")
        if raw is not None:
            await redis.delete(f"{prefix}{seq}")
        return None if raw is None else dict(json.loads(raw))
    finally:
        await redis.aclose()


async def _ready(workers: Workers, proc: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        assert proc.poll() is None, workers.text()
        return f"nats worker ready pid={proc.pid} " in workers.text()

    await until(ready, "the worker to be ready", timeout=90)


async def test_a_worker_killed_mid_send_is_redelivered_and_the_ledger_stops_the_double(
    provider: MockProvider, stream: Stream, workers: Workers, redis_url: str
) -> None:
    key = "welcome:killed:job-killed"
    provider.delay(key, 4.0)
    first = workers.spawn()
    await _ready(workers, first)
    seq = await stream.publish(job("killed"), job_id="job-killed")
    await until(lambda: provider.arrivals.get(key), "the send at the provider")
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait)
    second = workers.spawn()
    await _ready(workers, second)
    record = await until(lambda: _result(redis_url, workers.env["NATS_RESULTS_PREFIX"], seq), "the outcome",
                         timeout=120)
    assert (record["state"], record["job_id"]) == ("sent", "job-killed")
    assert record["attempt"] >= 2 and record["replayed"] is True
    assert provider.sends_for(key) == 1


async def test_sigterm_lets_the_running_send_finish_and_acks_it(
    provider: MockProvider, stream: Stream, workers: Workers, redis_url: str
) -> None:
    key = "welcome:term:job-term"
    provider.delay(key, 2.0)
    proc = workers.spawn()
    await _ready(workers, proc)
    seq = await stream.publish(job("term"), job_id="job-term")
    await until(lambda: provider.arrivals.get(key), "the send at the provider")
    proc.send_signal(signal.SIGTERM)
    # wait off the loop: the MockProvider answering the send runs on this one
    assert await asyncio.to_thread(proc.wait, 60) == 0, workers.text()
    record = await _result(redis_url, workers.env["NATS_RESULTS_PREFIX"], seq)
    assert record is not None, workers.text()
    assert (record["state"], record["attempt"]) == ("sent", 1)
    assert "acked=1" in workers.text() and provider.sends_for(key) == 1
    info = await stream.info()
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
