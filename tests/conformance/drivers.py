"""Drivers that run the adapters/ projects as real workers and read each job's terminal state.

Each driver starts real worker processes (arq workers, `rq worker --with-scheduler`
SimpleWorkers, the QStash webhook app under aiohttp's server) configured from the
environment exactly as the README shows, delivers jobs the way its queue does, and
reports the terminal state: ("sent", replayed) or ("fatal", code).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idemsend import RetryableError
from idemsend._chaos import spawn_worker
from idemsend.testing import MockProvider
from idemsend.testing._redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ROOT / "adapters"
SIGNING_KEY, NEXT_SIGNING_KEY = "sig_current_" + "0123456789" * 3, "sig_next_" + "9876543210" * 3


@dataclass(frozen=True)
class Terminal:
    state: str  # "sent" | "fatal" | "failed" (retries ran out)
    code: str | None = None
    replayed: bool | None = None
    reason: str = ""

    def brief(self) -> str:
        if self.state == "sent":
            return "sent (replayed)" if self.replayed else "sent"
        return f"{self.state} {self.code or ''}".strip()


def db_url(redis_url: str, db: int) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


class Driver:
    name = "base"
    workers_count = 2

    def __init__(self, provider: MockProvider, redis_url: str, *, db: int, extra_env: dict[str, str] | None = None):
        self.provider = provider
        self.redis_url = redis_url
        self.queue_url = db_url(redis_url, db)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "REDIS_URL": self.queue_url,
            "IDEMSEND_URL": provider.emails_url,
            "IDEMSEND_API_KEY": provider.api_key or "any",
            "IDEMSEND_LEDGER_URL": db_url(redis_url, 0),
            "IDEMSEND_LEDGER_PREFIX": f"conf-{self.name}-{uuid.uuid4().hex[:6]}",
            "IDEMSEND_RETRIES": "0",  # every retryable outcome goes back to the queue
            "IDEMSEND_LEASE": "2",
            **(extra_env or {}),
        }

    # -- processes -----------------------------------------------------------------------

    port = 0

    def spawn(self, index: int) -> subprocess.Popen[bytes]:
        log = Path(f"/tmp/idemsend-{self.name}-{os.getpid()}-{index}.log")
        self.logs.append(log)
        return spawn_worker(self.name, ADAPTERS, self.env, log, self.port)

    async def start(self) -> None:
        self.procs = [self.spawn(i) for i in range(self.workers_count)]
        await self.ready()

    async def ready(self) -> None:
        await asyncio.sleep(1.0)
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited: {self.tail()}")

    def tail(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in self.logs if p.exists())

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []

    async def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            await asyncio.to_thread(proc.wait)
        self.procs = []

    # -- jobs --------------------------------------------------------------------------------

    async def run(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> Terminal:
        raise NotImplementedError

    async def run_twice_at_once(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> list[Terminal]:
        raise NotImplementedError

    async def run_killing_worker(self, job_id: str, data: dict[str, Any], body: dict[str, Any], key: str) -> Terminal:
        """Deliver, SIGKILL the workers while the send is at the provider, restart them, and
        let the queue redeliver in its own way."""
        task = asyncio.ensure_future(self.run(job_id, data, body))
        await wait_for_arrival(self.provider, key)
        await self.kill_all()
        await self.after_kill(job_id)
        await self.start()
        return await task

    async def after_kill(self, job_id: str) -> None:
        return None


async def wait_for_arrival(provider: MockProvider, key: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(provider.arrivals.get(key, [])) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the provider never saw key {key!r}")
        await asyncio.sleep(0.01)


async def poll(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no terminal state for {what} within {timeout}s")
        await asyncio.sleep(0.05)


# -- arq -------------------------------------------------------------------------------------


class ArqDriver(Driver):
    name = "arq"

    def __init__(self, provider: MockProvider, redis_url: str) -> None:
        super().__init__(provider, redis_url, db=1, extra_env={
            "ARQ_QUEUE": f"conf:{uuid.uuid4().hex[:6]}", "ARQ_JOB_TIMEOUT": "4", "ARQ_MAX_TRIES": "6",
            "ARQ_RETRY_BASE": "0.2",
            # one job at a time per worker, so a lapsed lock lets the *other* worker take the
            # job (arq's own bookkeeping breaks if one worker runs the same job id twice)
            "ARQ_MAX_JOBS": "1",
        })
        self.pool: Any = None

    async def start(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        if self.pool is None:
            self.pool = await create_pool(RedisSettings.from_dsn(self.queue_url))
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None

    async def enqueue(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> None:
        # a redelivery of a finished job: arq keeps its result, so clear it first
        await self.pool.delete(f"arq:result:{job_id}", f"arq:retry:{job_id}")
        job = await self.pool.enqueue_job("send_email", data, body, _job_id=job_id, _queue_name=self.env["ARQ_QUEUE"])
        assert job is not None, f"arq refused job {job_id}"

    async def terminal(self, job_id: str, timeout: float = 60) -> Terminal:
        from arq.jobs import Job as ArqJob

        async def check() -> Terminal | None:
            info = await ArqJob(job_id, self.pool, _queue_name=self.env["ARQ_QUEUE"]).result_info()
            if info is None:
                return None
            if info.success:
                return Terminal("sent", replayed=bool(info.result["replayed"]))
            if isinstance(info.result, RetryableError):
                return Terminal("failed", reason=str(info.result))
            return Terminal("fatal", code=getattr(info.result, "code", type(info.result).__name__))

        result: Terminal = await poll(check, timeout, job_id)
        return result

    async def run(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> Terminal:
        await self.enqueue(job_id, data, body)
        return await self.terminal(job_id)

    async def run_twice_at_once(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> list[Terminal]:
        # arq runs one job id once at a time, until its in-progress lock lapses (a job
        # outliving its timeout): lapse it by hand while the first run is mid-send, and
        # the second worker picks the same job up at once.
        key = f"welcome:{data['user_id']}:{job_id}"
        self.provider.delay(key, 1.0)
        await self.enqueue(job_id, data, body)
        await wait_for_arrival(self.provider, key)
        await self.pool.delete(f"arq:in-progress:{job_id}")

        async def second_run_started() -> bool | None:
            tries = await self.pool.get(f"arq:retry:{job_id}")
            return True if tries is not None and int(tries) >= 2 else None

        await poll(second_run_started, 10, f"a second run of {job_id}")
        return [await self.terminal(job_id)]


# -- RQ --------------------------------------------------------------------------------------


class RQDriver(Driver):
    name = "rq"

    def __init__(self, provider: MockProvider, redis_url: str) -> None:
        self.queue_name = f"conf-{uuid.uuid4().hex[:6]}"
        super().__init__(provider, redis_url, db=2, extra_env={"RQ_MAX_RETRIES": "5", "RQ_QUEUE": self.queue_name})

    def _queue(self) -> Any:
        from redis import Redis
        from rq import Queue

        return Queue(self.queue_name, connection=Redis.from_url(self.queue_url))

    def enqueue(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> None:
        from rq import Retry

        self._queue().enqueue("jobs.send_email", data, body, job_id=job_id, retry=Retry(max=5, interval=1))

    async def terminal(self, job_id: str, timeout: float = 60) -> Terminal:
        from redis import Redis
        from rq.job import Job as RQJob
        from rq.job import JobStatus

        connection = Redis.from_url(self.queue_url)

        async def check() -> Terminal | None:
            job = await asyncio.to_thread(RQJob.fetch, job_id, connection=connection)
            status = job.get_status()
            meta = job.meta.get("idemsend", {})
            if status == JobStatus.FINISHED and meta.get("state") == "sent":
                return Terminal("sent", replayed=bool(meta.get("replayed")))
            if status == JobStatus.FAILED and meta.get("state") == "retrying":
                return Terminal("failed", reason=meta.get("message", ""))
            if status == JobStatus.FAILED:
                return Terminal("fatal", code=meta.get("code"))
            return None

        try:
            result: Terminal = await poll(check, timeout, job_id)
        finally:
            connection.close()
        return result

    async def run(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> Terminal:
        self.enqueue(job_id, data, body)
        # a killed worker may have held the scheduler lock: its retry waits for the lock to
        # lapse (about a minute) before a new scheduler re-enqueues it
        return await self.terminal(job_id, timeout=150)

    async def run_twice_at_once(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> list[Terminal]:
        key = f"welcome:{data['user_id']}:{job_id}"
        self.provider.delay(key, 0.5)
        self.enqueue(job_id, data, body)
        self.enqueue(job_id, data, body)  # the same job id twice in the queue: two workers take it
        await wait_for_arrival(self.provider, key)
        return [await self.terminal(job_id)]

    async def after_kill(self, job_id: str) -> None:
        # RQ's own abandoned-job sweep (the worker maintenance runs it after the dead
        # worker's heartbeat lapses); run now instead of waiting for the heartbeat TTL.
        from rq.registry import StartedJobRegistry

        queue = self._queue()
        await asyncio.to_thread(StartedJobRegistry(queue=queue).cleanup, time.time() + 3600)


# -- QStash ---------------------------------------------------------------------------------


class QStashDriver(Driver):
    name = "qstash"
    workers_count = 1

    def __init__(self, provider: MockProvider, redis_url: str) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/qstash/welcome"
        super().__init__(provider, redis_url, db=0, extra_env={
            "QSTASH_CURRENT_SIGNING_KEY": SIGNING_KEY, "QSTASH_NEXT_SIGNING_KEY": NEXT_SIGNING_KEY,
            "QSTASH_ENDPOINT_URL": self.endpoint,
        })

    async def ready(self) -> None:
        import aiohttp

        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(self.endpoint) as resp:
                        if resp.status == 405:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"the webhook did not start: {self.tail()}")
                await asyncio.sleep(0.05)

    def deliverer(self) -> Any:
        from idemsend.testing.qstash import QStashDeliverer

        return QStashDeliverer(self.endpoint, signing_key=SIGNING_KEY, retries=8)

    @staticmethod
    def terminal_of(delivery: Any) -> Terminal:
        last = delivery.last
        if delivery.state == "delivered":
            return Terminal("sent", replayed=bool(last.body["replayed"]))
        if delivery.state == "failed":
            return Terminal("fatal", code=last.body["error"]["code"])
        message = last.body["error"]["message"] if isinstance(last.body, dict) else str(last.body)
        return Terminal("failed", reason=message)

    async def run(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> Terminal:
        delivery = await self.deliverer().deliver({"data": data, "body": body}, message_id=job_id)
        return self.terminal_of(delivery)

    async def run_twice_at_once(self, job_id: str, data: dict[str, Any], body: dict[str, Any]) -> list[Terminal]:
        message = {"data": data, "body": body}
        deliveries = await asyncio.gather(
            self.deliverer().deliver(message, message_id=job_id), self.deliverer().deliver(message, message_id=job_id)
        )
        return [self.terminal_of(d) for d in deliveries]


DRIVERS: dict[str, type[Driver]] = {"arq": ArqDriver, "rq": RQDriver, "qstash": QStashDriver}
