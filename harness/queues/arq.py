"""arq: ``adapters/arq_worker`` under ``arq worker.WorkerSettings``; jobs go in with
``enqueue_job`` and end as arq's stored result (``arq:result:<job id>``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from idemsend import RetryableError

from .base import QueueDriver, QueueJob, Terminal, db_url, poll, retrying, wait_for_arrival

__all__ = ["ArqDriver"]


class ArqDriver(QueueDriver):
    name = "arq"
    project = "arq_worker"
    requires = ("arq",)
    order = 10
    # arq refuses a job id that is still queued: a duplicate can only come after the job ran
    duplicates_while_pending = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_url = db_url(self.redis_url, 1)
        self.queue_name = f"{self.profile.name}:{self.tag}"
        self.env.update({
            "REDIS_URL": self.queue_url,
            "ARQ_QUEUE": self.queue_name,
            "ARQ_JOB_TIMEOUT": str(max(1, round(self.profile.job_timeout))),
            "ARQ_MAX_TRIES": str(self.profile.max_tries),
            "ARQ_RETRY_BASE": str(self.profile.retry_base),
            "ARQ_MAX_JOBS": str(self.profile.jobs_per_worker),
        })
        self.pool: Any = None

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "arq", "worker.WorkerSettings"]

    async def open(self) -> None:
        from arq.connections import ArqRedis

        self.pool = ArqRedis.from_url(self.queue_url)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None

    async def deliver(self, job: QueueJob) -> bool:
        async def enqueue() -> bool:
            # a redelivery of a job that ran: arq keeps its result and try count, so clear them
            await self.pool.delete(f"arq:result:{job.id}", f"arq:retry:{job.id}")
            queued = await self.pool.enqueue_job(
                "send_email", job.data, job.body, _job_id=job.id, _queue_name=self.queue_name
            )
            return queued is not None

        return await retrying(enqueue, f"enqueue {job.id} into arq")

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        from arq.jobs import deserialize_result

        out: dict[str, Terminal | None] = {}
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start:start + 500])
            raws = await self.pool.mget([f"arq:result:{j}" for j in chunk])
            for job_id, raw in zip(chunk, raws, strict=True):
                if raw is None:
                    out[job_id] = None
                    continue
                info = deserialize_result(raw)
                if info.success:
                    out[job_id] = Terminal("sent", replayed=bool(info.result["replayed"]))
                elif isinstance(info.result, RetryableError):
                    out[job_id] = Terminal("failed", reason=str(info.result))
                else:
                    code = getattr(info.result, "code", "") or type(info.result).__name__
                    out[job_id] = Terminal("fatal", code=str(code), reason=str(info.result))
        return out

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        # arq runs one job id once at a time, until its in-progress lock lapses (a job
        # outliving its timeout): lapse it by hand while the first run is mid-send, and
        # the other worker picks the same job up at once.
        self.provider.delay(job.key, 1.0)
        await self.deliver(job)
        await wait_for_arrival(self.provider, job.key)
        await self.pool.delete(f"arq:in-progress:{job.id}")

        async def second_run_started() -> bool | None:
            tries = await self.pool.get(f"arq:retry:{job.id}")
            return True if tries is not None and int(tries) >= 2 else None

        await poll(second_run_started, 10, f"a second run of {job.id}")
        return [await self.wait(job.id)]
