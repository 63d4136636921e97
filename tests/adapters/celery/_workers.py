"""Real `celery worker` processes running ``worker/probe.py``, and a producer, for one broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from harness.queues.base import db_url
from harness.queues.celery import rabbitmq_url
from idemsend.testing import MockProvider

PROBE = Path(__file__).resolve().parent / "worker"
BROKERS = ("rabbitmq", "redis")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


class ProbeWorkers:
    """Spawns ``celery -A probe worker`` processes against ``broker`` (results in Redis)."""

    def __init__(self, broker: str, redis_url: str, provider: MockProvider, logs: Path, **env: str) -> None:
        from celery import Celery
        from redis import Redis

        tag = uuid.uuid4().hex[:6]
        self.tag, self.logs, self.provider = tag, logs, provider
        self.queue = f"probe-{tag}"
        self.results_url = db_url(redis_url, 5)
        self.transport: dict[str, Any] = {}
        if broker == "redis":
            self.broker_url = db_url(redis_url, 6)
            self.transport = {"global_keyprefix": f"{tag}:", "visibility_timeout": 10, "unacked_restore_interval": 1,
                              "unacked_restore_throttle": 1, "unacked_mutex_expire": 5}
        else:
            url, why = rabbitmq_url()
            if url is None:
                raise RuntimeError(why)
            self.broker_url = url
        self.env = {
            **os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": f"{PROBE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "IDEMSEND_URL": provider.emails_url, "IDEMSEND_API_KEY": provider.api_key or "any",
            "IDEMSEND_KEY": "welcome:{user_id}:{job_id}", "IDEMSEND_LEDGER_URL": db_url(redis_url, 0),
            "IDEMSEND_LEDGER_PREFIX": f"probe-{tag}", "IDEMSEND_RETRIES": "0", "IDEMSEND_LEASE": "2",
            "CELERY_BROKER_URL": self.broker_url, "CELERY_RESULT_BACKEND": self.results_url,
            "CELERY_QUEUE": self.queue, "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps(self.transport),
            "PROBE_DIR": str(logs), **env,
        }
        self.app = Celery(f"probe-producer-{tag}", broker=self.broker_url, set_as_current=False)
        self.app.conf.update(task_default_queue=self.queue, broker_transport_options=self.transport,
                             broker_connection_retry_on_startup=True)
        self.results = Redis.from_url(self.results_url)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.spawned = 0

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs.glob("*.log"))

    def _spawn(self, name: str, pool: str, concurrency: int) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{self.spawned}.log"
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "probe", "worker", "--pool", pool, "--concurrency",
                 str(concurrency), "-Q", self.queue, "-n", name, "--without-mingle", "--without-gossip",
                 "--without-heartbeat", "--loglevel", "WARNING"],
                cwd=PROBE, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )

    async def start(self, pool: str = "prefork", concurrency: int = 1) -> subprocess.Popen[bytes]:
        """One worker; returns once it answers a ping."""
        self.spawned += 1
        name = f"probe-{self.tag}-{self.spawned}@{socket.gethostname()}"
        proc = self._spawn(name, pool, concurrency)
        self.procs.append(proc)
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited at start:\n{self.log_text()}")
            replies = await asyncio.to_thread(self.app.control.ping, [name], timeout=0.5)
            if any(name in reply for reply in replies or []):
                return proc
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not answer a ping in 90 s:\n{self.log_text()}")

    def send(self, data: dict[str, Any], body: Any, task_id: str | None = None) -> str:
        task_id = task_id or f"probe-{uuid.uuid4().hex[:12]}"
        self.app.send_task("probe.send", args=[data, body], task_id=task_id, queue=self.queue)
        return task_id

    def meta(self, task_id: str) -> dict[str, Any] | None:
        raw = self.results.get(f"celery-task-meta-{task_id}")
        return json.loads(raw) if raw else None

    async def wait(self, task_id: str, timeout: float = 90) -> dict[str, Any]:
        """The task's result meta once it is SUCCESS or FAILURE."""
        deadline = time.monotonic() + timeout
        while True:
            meta = self.meta(task_id)
            if meta is not None and meta.get("status") in ("SUCCESS", "FAILURE"):
                return meta
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} not final in {timeout}s (meta {meta}):\n{self.log_text()}")
            await asyncio.sleep(0.05)

    async def stop(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Warm shutdown (SIGTERM) of one worker, or of all and the producer."""
        for p in [proc] if proc is not None else self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(p.wait, 30)
            except subprocess.TimeoutExpired:
                p.kill()
                await asyncio.to_thread(p.wait)
        if proc is None:
            with contextlib.suppress(Exception), self.app.connection_for_write() as connection:
                connection.default_channel.queue_delete(self.queue)
            self.app.close()
            self.results.close()

    async def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker (its pool processes die with it) and reap it."""
        proc.kill()
        await asyncio.to_thread(proc.wait)
