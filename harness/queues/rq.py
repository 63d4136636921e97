"""RQ: ``adapters/rq_worker`` under ``rq worker --with-scheduler`` (SimpleWorker); jobs go
in with ``Queue.enqueue`` and end as the job's status plus the adapter's
``job.meta["idemsend"]``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from .base import QueueDriver, QueueJob, Terminal, db_url, retrying, wait_for_arrival

__all__ = ["RQDriver"]


class RQDriver(QueueDriver):
    name = "rq"
    project = "rq_worker"
    requires = ("rq",)
    order = 20
    # a killed worker may have held the scheduler lock: its retry waits for the lock to
    # lapse (about a minute) before a new scheduler re-enqueues it
    wait_timeout = 150.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_url = db_url(self.redis_url, 2)
        self.queue_name = f"{self.profile.name}-{self.tag}"
        self.retries = self.profile.max_tries - 1
        self.env.update({
            "REDIS_URL": self.queue_url,
            "RQ_QUEUE": self.queue_name,
            "RQ_MAX_RETRIES": str(self.retries),
            "RQ_RETRY_BASE": str(self.profile.retry_base),
        })
        self.connection: Any = None

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "rq.cli", "worker", "--with-scheduler", "--worker-class", "rq.worker.SimpleWorker",
            "--url", self.queue_url, "--path", str(self.adapters / self.project),
            # RQ restarts its scheduler (which dies when Redis restarts) in its maintenance
            # pass, and an idle worker only gets there when its blocking dequeue times out
            # (worker TTL - 15 s, so 405 s by default): make both short.
            "--maintenance-interval", "5", "--worker-ttl", "25", "--logging_level", "WARNING", self.queue_name,
        ]

    async def open(self) -> None:
        from redis import Redis

        self.connection = Redis.from_url(self.queue_url)

    async def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _queue(self) -> Any:
        from rq import Queue

        return Queue(self.queue_name, connection=self.connection)

    async def deliver(self, job: QueueJob) -> bool:
        from rq import Retry

        def enqueue() -> bool:
            # RQ deletes a finished job's hash after result_ttl (500 s by default): a run
            # longer than that (10,000 jobs on a loaded machine) would read its first jobs'
            # states as gone. Keep them for the run.
            self._queue().enqueue(
                "jobs.send_email", job.data, job.body, job_id=job.id, retry=Retry(max=self.retries, interval=1),
                result_ttl=RUN_TTL, failure_ttl=RUN_TTL,
            )
            return True

        return await retrying(lambda: asyncio.to_thread(enqueue), f"enqueue {job.id} into RQ")

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        def read() -> dict[str, Terminal | None]:
            from rq.serializers import resolve_serializer

            loads = resolve_serializer(None).loads
            out: dict[str, Terminal | None] = {}
            for start in range(0, len(job_ids), 500):
                chunk = list(job_ids[start:start + 500])
                pipe = self.connection.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.hmget(f"rq:job:{job_id}", "status", "meta")
                for job_id, (status, meta) in zip(chunk, pipe.execute(), strict=True):
                    out[job_id] = _terminal((status or b"").decode(), loads(meta) if meta else {})
            return out

        return await asyncio.to_thread(read)

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        self.provider.delay(job.key, 0.5)
        await self.deliver(job)
        await self.deliver(job)  # the same job id twice in the queue: two workers take it
        await wait_for_arrival(self.provider, job.key)
        return [await self.wait(job.id)]

    async def sweep_abandoned(self) -> None:
        """RQ's own abandoned-job sweep (worker maintenance runs it once the dead worker's
        heartbeat lapses), now instead of after the heartbeat TTL."""
        from rq.registry import StartedJobRegistry

        def sweep() -> None:
            StartedJobRegistry(queue=self._queue()).cleanup(time.time() + 3600)

        with contextlib.suppress(Exception):  # Redis may be restarting; the next sweep catches up
            await asyncio.to_thread(sweep)


#: How long RQ keeps a finished or failed job's hash here (seconds): longer than any run.
RUN_TTL = 24 * 3600


def _terminal(status: str, meta: dict[str, Any]) -> Terminal | None:
    outcome = meta.get("idemsend", {})
    if status == "finished":
        return Terminal("sent", replayed=bool(outcome.get("replayed")))
    if status == "failed" and outcome.get("state") in ("failed", "retrying"):  # the last retry's reason
        return Terminal("failed", reason=str(outcome.get("message", "")))
    if status == "failed":  # fatal, or abandoned with no retries left (no outcome recorded)
        return Terminal("fatal", code=outcome.get("code") or "RQ_FAILED", reason=str(outcome.get("message", "")))
    return None
