"""``idemsend demo``: an at-least-once queue hammering a faulty provider, with no server.

An in-process MockProvider injects 5xx, 429, lost responses and IN_FLIGHT collisions;
a small in-memory queue delivers every job at least once: it delivers duplicates (some
at the same moment as the original, some later) and redelivers after RetryableError.
At the end the provider's own count must equal the job count: no double send, no loss.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._config import InFlightWait, Limits, RetryPolicy
from .._engine import Engine
from .._errors import FatalError, RetryableError
from .._hooks import Hook
from .._keys import Job
from ..ledger import SQLiteLedger
from ..testing._mock import Faults, MockProvider
from ._progress import Progress

__all__ = ["DemoReport", "run_demo"]


@dataclass
class DemoReport:
    jobs: int
    deliveries: int = 0
    duplicates_delivered: int = 0
    redeliveries_after_retryable: int = 0
    provider_requests: int = 0
    provider_sends: int = 0
    double_sends: int = 0
    sent_jobs: int = 0
    fatal_jobs: int = 0
    lost_jobs: int = 0
    unconfirmed_jobs: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.double_sends == 0 and self.lost_jobs == 0 and self.unconfirmed_jobs == 0
            and self.provider_sends == self.sent_jobs
        )

    def table(self) -> str:
        rows = [
            ("jobs", self.jobs),
            ("deliveries", self.deliveries),
            ("duplicates delivered", self.duplicates_delivered),
            ("redeliveries after RetryableError", self.redeliveries_after_retryable),
            ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
            ("provider requests", self.provider_requests),
            ("provider sends", self.provider_sends),
            ("jobs sent", self.sent_jobs),
            ("double sends", self.double_sends),
            ("fatal jobs", self.fatal_jobs),
            ("lost jobs (never sent)", self.lost_jobs),
            ("unconfirmed jobs (still retrying at the deadline)", self.unconfirmed_jobs),
            ("seconds", f"{self.seconds:.2f}"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {'what'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
        return "\n".join([*lines, "", self.verdict()])

    def verdict(self) -> str:
        """One line: OK, or what went wrong."""
        if self.ok:
            return "OK: every job sent exactly once"
        problems = []
        if self.double_sends:
            problems.append(f"{self.double_sends} double sends")
        if self.lost_jobs:
            problems.append(f"{self.lost_jobs} jobs never sent")
        if self.unconfirmed_jobs:
            problems.append(
                f"{self.unconfirmed_jobs} jobs never confirmed before the deadline (no double send: with"
                " --fault-rate 1 every request meets a fault, so no send can be confirmed)"
            )
        return "FAILED: " + "; ".join(problems or ["provider sends differ from jobs sent"])


def _key(job: Job) -> str:
    return f"welcome:{job.data['user_id']}:{job.id}"


async def run_demo(
    *,
    jobs: int = 500,
    dup_rate: float = 0.3,
    fault_rate: float = 0.1,
    concurrency: int = 100,
    ledger: bool = True,
    seed: int | None = None,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> DemoReport:
    if jobs < 1 or not 0 <= dup_rate <= 1 or not 0 <= fault_rate <= 1 or concurrency < 1:
        raise ValueError("jobs and concurrency must be >= 1; dup-rate and fault-rate must be in [0, 1]")
    rng = random.Random(seed)
    faults = Faults(
        rate_5xx=fault_rate * 0.4, rate_429=fault_rate * 0.2, rate_lost=fault_rate * 0.3,
        rate_in_flight=fault_rate * 0.1, retry_after=0.05,
    )
    report = DemoReport(jobs=jobs)
    queue: asyncio.Queue[Job | None] = asyncio.Queue()
    outcome: dict[str, str] = {}
    pending_redeliveries: set[asyncio.Task[None]] = set()
    bar = Progress(jobs, "demo", enabled=progress)
    start = time.monotonic()

    # the ledger's file: a throwaway one, deleted at the end (or, on an error, when collected)
    tmp = tempfile.TemporaryDirectory(prefix="idemsend-demo-")
    async with MockProvider(processing_delay=0.002, faults=faults, seed=seed) as provider:
        # Two engines, as two worker processes on one host would have, each with its own
        # SQLiteLedger on one file.
        engines = [
            Engine(
                provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key,
                ledger=SQLiteLedger(os.path.join(tmp.name, "ledger.db"), sweep_interval=0) if ledger else None,
                retry=RetryPolicy(retries=1, backoff=0.01), in_flight=InFlightWait(delay=0.05),
                limits=Limits(max_in_flight=concurrency), hooks=hooks,
            )
            for _ in range(2)
        ]
        job_list = [Job(f"job-{i:05d}", {"user_id": f"user-{i % (jobs // 2 + 1)}"}) for i in range(jobs)]
        for job in job_list:
            queue.put_nowait(job)
            if rng.random() < dup_rate:
                report.duplicates_delivered += 1
                if rng.random() < 0.5:
                    queue.put_nowait(job)  # right behind: the two run at the same moment
                else:
                    asyncio.get_running_loop().call_later(rng.uniform(0, 1.0), queue.put_nowait, job)

        async def redeliver(job: Job, after: float) -> None:
            await asyncio.sleep(min(after, 0.5))
            queue.put_nowait(job)

        async def worker(engine: Engine) -> None:
            while (job := await queue.get()) is not None:
                report.deliveries += 1
                body = {"to": [f"{job.data['user_id']}@example.com"], "template": "welcome"}
                try:
                    await engine.send(job, body)
                except RetryableError as exc:
                    report.redeliveries_after_retryable += 1
                    task = asyncio.ensure_future(redeliver(job, exc.retry_after or 0.05))
                    pending_redeliveries.add(task)
                    task.add_done_callback(pending_redeliveries.discard)
                    continue
                except FatalError as exc:
                    result = f"fatal:{exc.code}"
                else:
                    result = "sent"
                if job.id not in outcome:
                    outcome[job.id] = result
                    bar.advance()

        async with engines[0], engines[1]:
            workers = [asyncio.ensure_future(worker(engines[i % 2])) for i in range(concurrency)]
            # nothing can ever be confirmed when every request meets a fault: a short deadline
            deadline = time.monotonic() + (10.0 if fault_rate >= 1 else max(60.0, jobs * 0.05))
            while len(outcome) < jobs and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.1)  # let the late duplicates arrive and be answered
            while not queue.empty() or pending_redeliveries:
                await asyncio.sleep(0.05)
                if time.monotonic() > deadline:
                    break
            for _ in workers:
                queue.put_nowait(None)
            await asyncio.gather(*workers)
        bar.close()
        report.provider_requests = provider.stats.requests
        report.provider_sends = provider.sends
        report.double_sends = sum(n - 1 for n in provider.sends_by_key.values() if n > 1)
        report.faults = dict(provider.stats.faults)
        sends_by_key = provider.sends_by_key
    report.sent_jobs = sum(1 for v in outcome.values() if v == "sent")
    report.fatal_jobs = sum(1 for v in outcome.values() if v.startswith("fatal"))
    unfinished = [job for job in job_list if job.id not in outcome]
    report.unconfirmed_jobs = sum(1 for job in unfinished if sends_by_key[_key(job)] > 0)
    report.lost_jobs = len(unfinished) - report.unconfirmed_jobs
    report.seconds = time.monotonic() - start
    tmp.cleanup()
    return report
