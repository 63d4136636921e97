"""BullMQ: ``adapters/bullmq_worker`` under ``python worker.py`` (the ``bullmq`` Python
``Worker``); jobs go in with ``Queue.add`` and end in BullMQ's ``completed`` set (the
result as ``returnvalue``) or ``failed`` set (``failedReason``, and the adapter's outcome
as the job's last log row).

A duplicate delivery of one job id happens in BullMQ only through its lock: ``Queue.add``
ignores an id whose job still exists, and a job whose lock lapses (its worker died, or
could not renew the lock for ``lockDuration``) is moved back to ``wait`` by the stalled-job
check and run again. ``deliver_twice_at_once`` lapses the lock of a job mid-send and runs
that check; ``kill_all`` leaves the locks of the dead workers' jobs to lapse by themselves.
A delivery after the job ended is the id added again once the old job is gone (removed,
as ``removeOnComplete`` / ``removeOnFail`` do).

BullMQ needs redis-py >= 6.2 (arq needs < 6): it runs in its own environment,
``nox -s bullmq`` (``.nox/bullmq``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from .base import QueueDriver, QueueJob, Terminal, db_url, poll, retrying, wait_for_arrival

__all__ = ["BullMQDriver"]

#: How often each worker runs BullMQ's stalled-job check (ms): a dead worker's job is back
#: within its lock's lapse plus two checks.
STALLED_INTERVAL_MS = 1000


class BullMQDriver(QueueDriver):
    """Real ``bullmq`` workers (``adapters/bullmq_worker``) on a real Redis (database 3)."""

    name = "bullmq"
    project = "bullmq_worker"
    requires = ("bullmq",)
    order = 40
    # Queue.add ignores a job id whose job still exists: a duplicate comes after the job ran
    duplicates_while_pending = False
    wait_timeout = 90.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_url = db_url(self.redis_url, 3)
        self.queue_name = f"{self.profile.name}-{self.tag}"
        # BullMQ has no limit on one run; the lock is what decides a run is abandoned
        self.lock_ms = max(1000, round(self.profile.job_timeout * 1000))
        self.env.update({
            "REDIS_URL": self.queue_url,
            "BULLMQ_QUEUE": self.queue_name,
            "BULLMQ_MAX_TRIES": str(self.profile.max_tries),
            "BULLMQ_RETRY_BASE": str(self.profile.retry_base),
            "BULLMQ_CONCURRENCY": str(self.profile.jobs_per_worker),
            "BULLMQ_LOCK_DURATION": str(self.lock_ms),
            "BULLMQ_STALLED_INTERVAL": str(STALLED_INTERVAL_MS),
        })
        self.queue: Any = None
        # job id -> (the set and score it ended with, its Terminal): read each ending once
        self._ended: dict[str, tuple[tuple[str, float], Terminal]] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        """Why BullMQ cannot run here: it needs its own environment (redis-py >= 6.2)."""
        reason = super().unavailable()
        if reason is None:
            return None
        return "bullmq is not installed here: it needs redis-py >= 6.2, so it has its own environment (nox -s bullmq)"

    def worker_command(self) -> list[str]:
        """``python worker.py`` in ``adapters/bullmq_worker`` (configured by ``self.env``)."""
        return [sys.executable, "worker.py"]

    async def open(self) -> None:
        """The producer side: a ``bullmq.Queue`` on the queue's Redis."""
        from bullmq import Queue

        self.queue = Queue(self.queue_name, {"connection": self.queue_url})

    async def close(self) -> None:
        """Close the ``Queue``."""
        if self.queue is not None:
            await self.queue.close()
            self.queue = None

    async def ready(self) -> None:
        """Until every worker has registered its connection with Redis (BullMQ's worker list)."""

        async def registered() -> bool | None:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a {self.name} worker exited at start:\n{self.tail()}")
            workers = await self.queue.get_workers()
            return True if len({w.get("rawname") for w in workers}) >= len(self.procs) else None

        await poll(registered, 60, f"{len(self.procs)} bullmq workers to start", every=0.1)

    # -- keys, from BullMQ's own key layout ------------------------------------------------------

    @property
    def _redis(self) -> Any:
        return self.queue.client

    def _key(self, job_id: str) -> str:
        return str(self.queue.toKey(job_id))

    async def deliver(self, job: QueueJob) -> bool:
        """``Queue.add`` with the adapter's ``job_options`` and ``jobId=job.id``; a job that
        ended is removed first (as ``removeOnComplete`` would), so the id is taken again.
        False while the id's job is still pending (BullMQ would ignore the add)."""
        from idemsend.adapters.bullmq import job_options

        async def add() -> bool:
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(self._key(job.id))
            pipe.zscore(self.queue.keys["completed"], job.id)
            pipe.zscore(self.queue.keys["failed"], job.id)
            exists, completed, failed = await pipe.execute()
            if exists and completed is None and failed is None:
                return False  # still waiting, delayed or active: BullMQ would ignore the add
            if exists and not await self.queue.remove(job.id):
                return False  # locked by a worker after all
            await self.queue.add(
                "send_email", {"data": job.data, "body": job.body},
                job_options(max_tries=self.profile.max_tries, jobId=job.id),
            )
            return True

        return await retrying(add, f"add {job.id} to bullmq")

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        """From BullMQ's ``completed`` and ``failed`` sets (``ZMSCORE``, 500 jobs a command);
        for a job that ended since the last look, its ``returnvalue`` / ``failedReason`` and
        last log row (the adapter's outcome). A job's score there is its ``finishedOn``, so a
        job that ran again and ended again is read again."""
        out: dict[str, Terminal | None] = {}
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start:start + 500])
            pipe = self._redis.pipeline(transaction=False)
            pipe.zmscore(self.queue.keys["completed"], chunk)
            pipe.zmscore(self.queue.keys["failed"], chunk)
            completed, failed = await pipe.execute()
            fresh: list[tuple[str, tuple[str, float]]] = []
            for job_id, done, fail in zip(chunk, completed, failed, strict=True):
                if done is None and fail is None:
                    out[job_id] = None  # waiting, delayed (a retry), active, or not added yet
                    continue
                end = ("completed", done) if done is not None else ("failed", fail)
                seen = self._ended.get(job_id)
                if seen is not None and seen[0] == end:
                    out[job_id] = seen[1]
                else:
                    fresh.append((job_id, end))
            if fresh:
                pipe = self._redis.pipeline(transaction=False)
                for job_id, _ in fresh:
                    pipe.hmget(self._key(job_id), "returnvalue", "failedReason")
                    pipe.lindex(f"{self._key(job_id)}:logs", -1)
                answers = await pipe.execute()
                for i, (job_id, end) in enumerate(fresh):
                    (returnvalue, failed_reason), last_log = answers[2 * i:2 * i + 2]
                    terminal = _terminal(end[0] == "completed", returnvalue, failed_reason, last_log)
                    self._ended[job_id] = (end, terminal)
                    out[job_id] = terminal
        return out

    async def _stalled_check(self) -> list[str]:
        """BullMQ's stalled-job check (what every worker runs each ``stalledInterval``), now:
        jobs marked at the previous check whose lock is gone go back to ``wait``; every
        active job is marked for the next one. The check's throttle key is cleared first."""
        await self._redis.delete(self.queue.keys["stalled-check"])
        moved = await self.queue.scripts.moveStalledJobsToWait(self.profile.max_tries, STALLED_INTERVAL_MS)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in moved or []]

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        """A lock lapse mid-send, then BullMQ's stalled-job check: two runs of one job."""
        # The first run's lock lapses while its send is at the provider (as when its worker
        # cannot reach Redis for lockDuration); the stalled-job check moves the job back to
        # wait and the other worker (each runs one job at a time here) runs it at once.
        self.provider.delay(job.key, 1.0)
        await self.deliver(job)
        await wait_for_arrival(self.provider, job.key)
        await self._redis.delete(f"{self._key(job.id)}:lock")

        async def moved_back() -> bool | None:
            return True if job.id in await self._stalled_check() else None

        await poll(moved_back, 10, f"the stalled-job check to move {job.id} back", every=0.05)

        async def second_run_started() -> bool | None:
            started = await self._redis.hget(self._key(job.id), "ats")
            return True if started is not None and int(started) >= 2 else None

        await poll(second_run_started, 10, f"a second run of {job.id}")
        return [await self.wait(job.id)]

    async def sweep_abandoned(self) -> None:
        """BullMQ's stalled-job check, now: the jobs of dead workers whose locks have lapsed
        go back to ``wait`` (the live workers run the same check every second)."""
        try:
            await self._stalled_check()
        except Exception:  # Redis may be restarting; the workers' own checks catch up
            return


def _terminal(completed: bool, returnvalue: str | None, failed_reason: str | None, last_log: str | None) -> Terminal:
    """A job in ``completed`` (``completed``) or ``failed``, from what BullMQ and the adapter kept."""
    if completed:
        return Terminal("sent", replayed=bool(_json(returnvalue).get("replayed")))
    outcome = _json(last_log)
    if outcome.get("idemsend") == "failed":  # the tries ran out on a retryable error
        return Terminal("failed", reason=str(outcome.get("message", failed_reason or "")))
    if outcome.get("idemsend") == "fatal":
        return Terminal("fatal", code=str(outcome.get("code") or "FATAL"), reason=str(outcome.get("message", "")))
    # failed by BullMQ itself (stalled more than maxStalledCount) or by an unexpected error
    reason = failed_reason or ""
    return Terminal("fatal", code="BULLMQ_STALLED" if "stalled" in reason else "BULLMQ_FAILED", reason=reason)


def _json(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
