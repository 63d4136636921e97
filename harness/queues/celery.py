"""Celery: ``adapters/celery_worker`` under real ``celery -A tasks worker`` processes
(prefork pool, ``acks_late``, ``reject_on_worker_lost``), with RabbitMQ as broker (``celery``)
and with Redis as broker (``celery-redis``); results in Redis either way. Jobs go in with
``send_task`` under the job's id as task id and end as the result backend's ``SUCCESS`` or
``FAILURE`` (the adapter's ``SendFailed``: code, message, retries ran out or not).

A SIGKILLed worker takes its pool processes with it (Celery gives them a parent-death
signal); the broker redelivers what it held: RabbitMQ when the connection drops, Redis once
the message's ``visibility_timeout`` (set short here) has passed, through the restore sweep
every worker runs (here every second) or ``sweep_abandoned``. A Redis broker can also drop a
message outright (kombu's ``BRPOP`` window, see ``CeleryRedisDriver``): that driver's
producer re-sends a job that is nowhere in the broker and has no result.

RabbitMQ is ``RABBITMQ_URL``, else 127.0.0.1:5672 (guest/guest); when nothing listens there
and a ``rabbitmq-server`` binary exists, it is started (``-detached``) once and left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar, cast

from .base import QueueDriver, QueueJob, Terminal, db_url, retrying, wait_for_arrival

__all__ = ["CeleryDriver", "CeleryRedisDriver", "rabbitmq_url", "terminal"]

#: RabbitMQ on this machine, as the README's commands use it.
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
#: the task the worker project registers
TASK = "send_email"
#: Celery's result key prefix in the Redis result backend
RESULT_PREFIX = "celery-task-meta-"

_rabbitmq: tuple[str | None, str] | None = None


def _listening(host: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def rabbitmq_url() -> tuple[str | None, str]:
    """``(url, "")`` for the RabbitMQ to use, or ``(None, why not)``: ``RABBITMQ_URL`` if set,
    else 127.0.0.1:5672, started with ``rabbitmq-server -detached`` if nothing listens there
    and the binary exists. Decided once per process."""
    global _rabbitmq
    if _rabbitmq is not None:
        return _rabbitmq
    url = os.environ.get("RABBITMQ_URL")
    if url:
        _rabbitmq = (url, "")
    elif _listening("127.0.0.1", 5672):
        _rabbitmq = (LOCAL_RABBITMQ, "")
    elif (binary := shutil.which("rabbitmq-server")) is None:
        _rabbitmq = (None, "celery (RabbitMQ broker) needs RabbitMQ: RABBITMQ_URL is unset, nothing listens on "
                           "127.0.0.1:5672 and there is no rabbitmq-server to start")
    else:
        subprocess.run([binary, "-detached"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _listening("127.0.0.1", 5672):
            time.sleep(0.5)
        _rabbitmq = (LOCAL_RABBITMQ, "") if _listening("127.0.0.1", 5672) else (
            None, "celery (RabbitMQ broker): rabbitmq-server -detached did not listen on 127.0.0.1:5672 within 90 s")
    return _rabbitmq


def terminal(meta: dict[str, Any]) -> Terminal | None:
    """A job's ``Terminal`` from its Celery result meta (None while it is not final)."""
    status = meta.get("status")
    result = meta.get("result")
    if status == "SUCCESS":
        return Terminal("sent", replayed=bool(isinstance(result, dict) and result.get("replayed")))
    if status != "FAILURE":
        return None  # PENDING (gone), RETRY, STARTED
    result = result if isinstance(result, dict) else {}
    exc_type, message = result.get("exc_type"), result.get("exc_message")
    if exc_type == "SendFailed" and isinstance(message, list) and len(message) in (3, 4):  # 4: with maybe_sent
        text, code, retryable = message[:3]
        if retryable:  # the last retry's real reason
            return Terminal("failed", reason=str(text))
        return Terminal("fatal", code=str(code), reason=str(text))
    # anything else Celery recorded (WorkerLostError without reject_on_worker_lost, a bug)
    return Terminal("fatal", code=f"CELERY_{exc_type or 'FAILURE'}", reason=str(message or ""))


class CeleryDriver(QueueDriver):
    """Celery with RabbitMQ as broker."""

    name = "celery"
    project = "celery_worker"
    requires = ("celery",)
    order = 60
    wait_timeout = 120.0
    #: prefork processes per worker, at most (each is a whole interpreter on 2 cores)
    max_pool: ClassVar[int] = 4

    @classmethod
    def unavailable(cls) -> str | None:
        if super().unavailable():
            return f"{cls.name} is not installed here: Celery runs in its own environment (nox -s celery)"
        return cls._broker()[1] or None

    @classmethod
    def _broker(cls) -> tuple[str | None, str]:
        return rabbitmq_url()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_name = f"idemsend-{self.profile.name}-{self.name}-{self.tag}"
        self.results_url = db_url(self.redis_url, 3)
        self.broker_url = self._broker()[0] or LOCAL_RABBITMQ
        self.transport_options = self._transport_options()
        self.pool_size = max(1, min(self.profile.jobs_per_worker, self.max_pool))
        self.spawned = 0
        self.env.update({
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": self.results_url,
            "CELERY_QUEUE": self.queue_name,
            "CELERY_MAX_RETRIES": str(self.profile.max_tries - 1),
            "CELERY_RETRY_BASE": str(self.profile.retry_base),
            "CELERY_RETRY_CAP": str(self.profile.retry_cap),
            "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps(self.transport_options),
        })
        self.app: Any = None
        self.results: Any = None

    def _transport_options(self) -> dict[str, Any]:
        return {}

    def worker_command(self) -> list[str]:
        """``celery -A tasks worker`` (prefork), with a node name of its own."""
        self.spawned += 1
        return [
            sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork",
            "--concurrency", str(self.pool_size), "--prefetch-multiplier", "1", "-Q", self.queue_name,
            "-n", f"{self.name}-{self.tag}-{self.spawned}@%h", "--without-mingle", "--without-gossip",
            "--without-heartbeat", "--loglevel", "WARNING",
        ]

    async def open(self) -> None:
        """The producer: a Celery app on the same broker, and a Redis client for results."""
        from celery import Celery
        from redis import Redis

        self.app = Celery(f"harness-{self.tag}", broker=self.broker_url, set_as_current=False)
        self.app.conf.update(
            task_default_queue=self.queue_name, broker_transport_options=self.transport_options,
            broker_connection_retry_on_startup=True,
            task_publish_retry_policy={"max_retries": 10, "interval_start": 0, "interval_step": 0.2,
                                       "interval_max": 1},
        )
        self.results = Redis.from_url(self.results_url)

    async def close(self) -> None:
        """Delete the run's queue and close the producer."""
        if self.app is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._delete_queue)
            self.app.close()
            self.app = None
        if self.results is not None:
            self.results.close()
            self.results = None

    def _delete_queue(self) -> None:
        with self.app.connection_for_write() as connection:
            connection.default_channel.queue_delete(self.queue_name)

    async def ready(self) -> None:
        """Until every worker answers a ping (it consumes from the broker)."""
        names = {f"{self.name}-{self.tag}-{n}@{socket.gethostname()}" for n in
                 range(self.spawned - len(self.procs) + 1, self.spawned + 1)}
        deadline = time.monotonic() + 60
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a {self.name} worker exited at start:\n{self.tail()}")
            replies = await asyncio.to_thread(self.app.control.ping, list(names), timeout=0.5)
            seen = {name for reply in replies or [] for name in reply}
            if names <= seen:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} workers {sorted(names - seen)} not ready in 60 s:\n{self.tail()}")

    async def deliver(self, job: QueueJob) -> bool:
        """``send_task`` under the job's id, after forgetting an earlier run's result."""

        def publish() -> bool:
            # a redelivery of a job that ended: its old state goes, so wait() sees the new run
            self.results.delete(RESULT_PREFIX + job.id)
            self.app.send_task(TASK, args=[job.data, job.body], task_id=job.id, queue=self.queue_name)
            return True

        return await retrying(lambda: asyncio.to_thread(publish), f"send {job.id} to Celery")

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        """Each job's ``Terminal`` from its result meta in Redis."""

        def read() -> dict[str, Terminal | None]:
            out: dict[str, Terminal | None] = {}
            for start in range(0, len(job_ids), 500):
                chunk = list(job_ids[start:start + 500])
                for job_id, raw in zip(chunk, self.results.mget([RESULT_PREFIX + j for j in chunk]), strict=True):
                    out[job_id] = terminal(json.loads(raw)) if raw else None
            return out

        return await asyncio.to_thread(read)

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        """Two messages with one task id, taken by two workers while the first send is slow."""
        self.provider.delay(job.key, 0.5)
        await self.deliver(job)
        await self.deliver(job)  # two messages with one task id: both workers take one
        await wait_for_arrival(self.provider, job.key)
        return [await self.wait(job.id)]


class CeleryRedisDriver(CeleryDriver):
    """Celery with Redis as broker: a delivered message that is not acked within the
    ``visibility_timeout`` goes back to the queue (kombu's restore sweep).

    kombu takes a message off the queue with ``BRPOP`` and records it as unacked with a
    second command, so a message the server handed out when Redis stops (or that a worker
    killed in between held) is in neither place and is never delivered again: the chaos run
    lost one job in 10,000 that way. The producer therefore does what a Redis-broker user
    has to do (``docs/adapters-celery.md``): a job with no final result that is neither
    queued nor held (unacked) on two looks ``LOST_AFTER`` seconds apart is sent again.
    idemsend makes that safe; ``resent`` lists them (printed at ``close``).
    """

    name = "celery-redis"
    order = 61
    #: seconds between looks for lost messages, and how long a job must be missing
    SWEEP_EVERY: ClassVar[float] = 5.0
    LOST_AFTER: ClassVar[float] = 5.0

    @classmethod
    def _broker(cls) -> tuple[str | None, str]:
        return None, ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broker_url = db_url(self.redis_url, 4)
        self.env["CELERY_BROKER_URL"] = self.broker_url
        self.pending: dict[str, tuple[QueueJob, float]] = {}
        self.missing: dict[str, float] = {}
        self.resent: list[str] = []
        self._sweeper: asyncio.Task[None] | None = None

    def _transport_options(self) -> dict[str, Any]:
        # Long enough for a message a live worker holds (a retry's countdown, then the run),
        # short enough that a killed worker's messages come back within the test's patience.
        visibility = max(15.0, 2 * (self.profile.retry_cap * 1.25 + self.profile.job_timeout))
        if self.profile.name == "chaos":
            visibility = 30.0  # a loaded machine holds messages longer
        return {
            "visibility_timeout": visibility,
            "global_keyprefix": f"{self.tag}:",  # kombu's unacked keys are per database otherwise
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 5,  # a worker killed while restoring holds the mutex this long
        }

    async def open(self) -> None:
        """The producer, and its sweep for messages the broker lost."""
        await super().open()
        self._sweeper = asyncio.ensure_future(self._sweep_lost())

    async def close(self) -> None:
        """Stop the sweep (saying what it re-sent) and close the producer."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.resent:
            shown = ", ".join(self.resent[:10]) + (" …" if len(self.resent) > 10 else "")
            print(f"{self.name}: the producer sent {len(self.resent)} job(s) again that the Redis broker lost: "
                  f"{shown}", file=sys.stderr)
        await super().close()

    async def deliver(self, job: QueueJob) -> bool:
        """Deliver, and remember the job until it ends (for the sweep)."""
        self.pending[job.id] = (job, time.monotonic())
        self.missing.pop(job.id, None)
        return await super().deliver(job)

    async def sweep_abandoned(self) -> None:
        """kombu's restore of unacked messages older than ``visibility_timeout``, now."""

        def sweep() -> None:
            from kombu import connection as kombu_connection

            connection_class: Any = kombu_connection.Connection
            with connection_class(self.broker_url, transport_options=self.transport_options) as connection:
                connection.default_channel.qos.restore_visible(num=None, interval=1)

        with contextlib.suppress(Exception):  # Redis may be restarting; the workers' sweep catches up
            await asyncio.to_thread(sweep)

    def _held(self) -> set[str]:
        """The task ids of every message queued or unacked in the broker."""
        from redis import Redis

        prefix = self.transport_options["global_keyprefix"]
        client = Redis.from_url(self.broker_url)
        try:
            queues = [key for key in client.scan_iter(f"{prefix}{self.queue_name}*") if client.type(key) == b"list"]
            # redis-py 5's stubs type these as "list | Awaitable[list]" (sync and async in one)
            raw: list[Any] = [item for key in queues for item in cast(list[Any], client.lrange(key, 0, -1))]
            raw += cast(list[Any], client.hvals(f"{prefix}unacked"))
        finally:
            client.close()
        return {m.decode() for item in raw for m in _CORRELATION.findall(item)}

    async def _sweep_lost(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP_EVERY)
            now = time.monotonic()
            due = [job_id for job_id, (_, at) in self.pending.items() if now - at > self.LOST_AFTER]
            if not due:
                continue
            try:
                ended = await super().states(due)
                held = await asyncio.to_thread(self._held)
            except Exception:
                continue  # Redis restarting
            for job_id in due:
                if ended[job_id] is not None:
                    self.pending.pop(job_id, None)
                    self.missing.pop(job_id, None)
                elif job_id in held:
                    self.missing.pop(job_id, None)
                elif now - self.missing.setdefault(job_id, now) >= self.LOST_AFTER:
                    self.resent.append(job_id)
                    with contextlib.suppress(Exception):
                        await self.deliver(self.pending[job_id][0])


#: a task id in a kombu message (its ``correlation_id`` property)
_CORRELATION = re.compile(rb'"correlation_id": "([^"]+)"')
