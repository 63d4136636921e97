"""Dramatiq: ``adapters/dramatiq_worker`` under the real ``dramatiq tasks`` CLI (one worker
process, ``jobs_per_worker`` threads), with RabbitMQ as broker (``dramatiq``) and with Redis
as broker (``dramatiq-redis``). Jobs go in with ``broker.enqueue`` under the job's id as the
message id and end as the outcome record the worker keeps for each try (its ``on_outcome``
writes it to a Redis hash of the run's own): ``sent``, ``fatal`` or ``failed`` is final,
``retrying`` is not.

The CLI runs the worker in a child process, which outlives a SIGKILLed parent: each worker
runs in a process group of its own and a kill takes the whole group, as a container's or a
systemd unit's kill does. The broker redelivers what it held: RabbitMQ when the connection
drops, the Redis broker once the dead worker's heartbeat is older than ``heartbeat_timeout``
(short here) and another worker's maintenance (made frequent here) requeues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .base import QueueDriver, QueueJob, Terminal, db_url, retrying, wait_for_arrival
from .celery import LOCAL_RABBITMQ, rabbitmq_url

__all__ = ["DramatiqDriver", "DramatiqRedisDriver", "terminal"]

#: the actor the worker project declares
ACTOR = "send_email"


def terminal(record: dict[str, Any] | None) -> Terminal | None:
    """A job's ``Terminal`` from its latest outcome record (None while it is not final)."""
    if not record:
        return None
    state = record.get("state")
    if state == "sent":
        return Terminal("sent", replayed=bool(record.get("replayed")))
    if state == "failed":
        return Terminal("failed", reason=str(record.get("message", "")))
    if state == "fatal":
        code = str(record.get("code") or "DRAMATIQ_FAILED")
        return Terminal("fatal", code=code, reason=str(record.get("message", "")))
    return None  # retrying


class DramatiqDriver(QueueDriver):
    """Dramatiq with RabbitMQ as broker."""

    name = "dramatiq"
    project = "dramatiq_worker"
    requires = ("dramatiq", "pika")
    order = 70
    wait_timeout = 120.0

    @classmethod
    def unavailable(cls) -> str | None:
        if super().unavailable():
            return f"{cls.name} is not installed here: pip install -e '.[dramatiq]' (or nox -s dramatiq)"
        return cls._broker_problem()

    @classmethod
    def _broker_problem(cls) -> str | None:
        url, why = rabbitmq_url()
        return None if url else why.replace("celery", cls.name, 1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_name = f"idemsend-{self.profile.name}-{self.name}-{self.tag}"
        self.outcomes_url = db_url(self.redis_url, 3)
        self.outcomes_key = f"idemsend-dramatiq-outcomes:{self.tag}"
        self.broker_url = self._broker_url()
        self.env.update({
            "DRAMATIQ_BROKER_URL": self.broker_url,
            "DRAMATIQ_QUEUE": self.queue_name,
            "DRAMATIQ_NAMESPACE": f"idemsend-{self.tag}",
            "DRAMATIQ_HEARTBEAT_TIMEOUT": "10000",
            "DRAMATIQ_MAINTENANCE_CHANCE": "100000",
            "DRAMATIQ_MAX_RETRIES": str(self.profile.max_tries - 1),
            "DRAMATIQ_RETRY_BASE": str(self.profile.retry_base),
            "DRAMATIQ_RETRY_CAP": str(self.profile.retry_cap),
            "IDEMSEND_OUTCOMES_URL": self.outcomes_url,
            "IDEMSEND_OUTCOMES_KEY": self.outcomes_key,
        })
        self.broker: Any = None
        self.outcomes: Any = None

    def _broker_url(self) -> str:
        url = rabbitmq_url()[0] or LOCAL_RABBITMQ
        return url.rstrip("/") if url.endswith("//") else url  # pika reads "//" as the vhost "/"

    def worker_command(self) -> list[str]:
        """``dramatiq tasks`` with one worker process and ``jobs_per_worker`` threads."""
        return [
            sys.executable, "-m", "dramatiq", "tasks", "--processes", "1",
            "--threads", str(max(1, self.profile.jobs_per_worker)), "--queues", self.queue_name,
            "--worker-shutdown-timeout", "15000",
        ]

    def _make_broker(self) -> Any:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=self.broker_url, confirm_delivery=True)

    async def open(self) -> None:
        """The producer: a broker of the same kind, the actor's name declared on it, and a
        Redis client for the outcome records."""
        from redis import Redis

        self.broker = self._make_broker()
        self._declare()
        self.outcomes = Redis.from_url(self.outcomes_url)

    def _declare(self) -> None:
        # on the server now (the queue, its delay queue and its dead letters), not at the first enqueue
        self.broker.declare_queue(self.queue_name, ensure=True)

    async def close(self) -> None:
        """Delete the run's queues and outcome records, and close the producer."""
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._delete_queues)
            with contextlib.suppress(Exception):
                self.broker.close()
            self.broker = None
        if self.outcomes is not None:
            with contextlib.suppress(Exception):
                self.outcomes.delete(self.outcomes_key)
            self.outcomes.close()
            self.outcomes = None

    def _delete_queues(self) -> None:
        from dramatiq.common import dq_name, xq_name

        channel = self.broker.channel
        for queue in (self.queue_name, dq_name(self.queue_name), xq_name(self.queue_name)):
            channel.queue_delete(queue)

    def _message(self, job: QueueJob) -> Any:
        from dramatiq import Message

        return Message(queue_name=self.queue_name, actor_name=ACTOR, args=(job.data, job.body), kwargs={},
                       options={}, message_id=job.id)

    async def deliver(self, job: QueueJob) -> bool:
        """``broker.enqueue`` under the job's id, after forgetting an earlier run's outcome."""

        def publish() -> bool:
            self.outcomes.hdel(self.outcomes_key, job.id)  # a redelivery of a job that ended: wait for the new run
            self.broker.enqueue(self._message(job))
            return True

        return await retrying(lambda: asyncio.to_thread(publish), f"enqueue {job.id} into Dramatiq")

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        """Each job's ``Terminal`` from its latest outcome record."""

        def read() -> dict[str, Terminal | None]:
            out: dict[str, Terminal | None] = {}
            for start in range(0, len(job_ids), 500):
                chunk = list(job_ids[start:start + 500])
                for job_id, raw in zip(chunk, self.outcomes.hmget(self.outcomes_key, chunk), strict=True):
                    out[job_id] = terminal(json.loads(raw)) if raw else None
            return out

        return await asyncio.to_thread(read)

    async def enqueue_raw(self, job: QueueJob, message_id: object) -> None:
        """Enqueue ``job``'s message under ``message_id`` as given (a hostile producer's)."""
        message = self._message(job)
        await asyncio.to_thread(self.broker.enqueue, message.copy(message_id=message_id))

    async def dead_letters(self) -> int:
        """How many messages the run's queue has dead-lettered."""
        from dramatiq.common import xq_name

        def count() -> int:
            method = self.broker.channel.queue_declare(xq_name(self.queue_name), passive=True).method
            return int(method.message_count)

        return await asyncio.to_thread(count)

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        """Two messages with one id, taken by two workers while the first send is slow."""
        self.provider.delay(job.key, 0.5)
        await self.deliver(job)
        await self.deliver(job)
        await wait_for_arrival(self.provider, job.key)
        return [await self.wait(job.id)]

    # -- processes: the CLI's worker child outlives its parent, so each worker is a group ----

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        cwd = self.adapters / self.project
        env = {**self.env, "PYTHONPATH": f"{cwd}{os.pathsep}{self.env.get('PYTHONPATH', '')}"}
        log = self.run_dir.file(f"{self.name}-{self.tag}-worker-{slot}.log")
        if log not in self.logs:
            self.logs.append(log)
        with log.open("ab") as out:
            return subprocess.Popen(self.worker_command(), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    async def kill_all(self) -> None:
        """SIGKILL every worker's process group and reap them."""
        for proc in self.procs:
            _kill_group(proc)
        for proc in self.procs:
            await asyncio.to_thread(proc.wait)
        self.procs = []

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL one worker's process group (the supervisor restarts it)."""
        _kill_group(rng.choice(self.procs))

    async def stop(self) -> None:
        """Stop as the base does, then make sure no worker child is left behind."""
        procs = list(self.procs)
        await super().stop()
        for proc in procs:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class DramatiqRedisDriver(DramatiqDriver):
    """Dramatiq with Redis as broker (a namespace of the run's own)."""

    name = "dramatiq-redis"
    requires = ("dramatiq", "redis")
    order = 71

    @classmethod
    def _broker_problem(cls) -> str | None:
        return None

    def _broker_url(self) -> str:
        return db_url(self.redis_url, 5)

    def _make_broker(self) -> Any:
        from dramatiq.brokers.redis import RedisBroker

        broker_class: Any = RedisBroker  # its __init__ is untyped
        return broker_class(url=self.broker_url, namespace=self.env["DRAMATIQ_NAMESPACE"])

    def _declare(self) -> None:
        self.broker.declare_queue(self.queue_name)

    async def dead_letters(self) -> int:
        from dramatiq.common import xq_name

        key = f"{self.env['DRAMATIQ_NAMESPACE']}:{xq_name(self.queue_name)}"
        return int(await asyncio.to_thread(self.broker.client.zcard, key))

    def _delete_queues(self) -> None:
        client = self.broker.client
        keys = list(client.scan_iter(f"{self.env['DRAMATIQ_NAMESPACE']}:*"))
        if keys:
            client.delete(*keys)
