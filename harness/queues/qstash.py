"""QStash: ``adapters/qstash_webhook`` (one aiohttp webhook process); the harness plays
QStash itself, delivering signed messages with ``QStashDeliverer`` and retrying on its own
schedule. A job is final once every delivery of it has ended; its state is its latest
delivery's (as arq and RQ keep one state per job id, the latest run's)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from idemsend.testing import free_port

from .base import QueueDriver, QueueJob, Terminal

__all__ = ["QStashDriver"]

SIGNING_KEY, NEXT_SIGNING_KEY = "sig_current_" + "0123456789" * 3, "sig_next_" + "9876543210" * 3
#: deliveries in flight at once, as QStash's parallelism
PARALLELISM = 200
#: more tries than the profile's: while the only webhook process restarts after a kill,
#: deliveries meet a closed port, and QStash counts those as tries too
RESTART_TRIES = 3


class QStashDriver(QueueDriver):
    name = "qstash"
    project = "qstash_webhook"
    requires = ("qstash",)
    order = 30
    max_workers = 1  # one process serves the port

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/qstash/welcome"
        self.env.update({
            "QSTASH_CURRENT_SIGNING_KEY": SIGNING_KEY,
            "QSTASH_NEXT_SIGNING_KEY": NEXT_SIGNING_KEY,
            "QSTASH_ENDPOINT_URL": self.endpoint,
        })
        self._deliveries: dict[str, list[asyncio.Task[Terminal]]] = {}
        self._slots = asyncio.Semaphore(PARALLELISM)

    def worker_command(self) -> list[str]:
        return [sys.executable, "app.py", "--port", str(self.port)]

    async def ready(self) -> None:
        import aiohttp

        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.endpoint) as resp:
                        if resp.status == 405:  # up, and it takes POSTs only
                            return
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"the webhook did not start:\n{self.tail()}")
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        pending = [t for tasks in self._deliveries.values() for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _deliverer(self) -> Any:
        from idemsend.testing.qstash import QStashDeliverer

        base, cap = self.profile.retry_base, self.profile.retry_cap
        return QStashDeliverer(
            self.endpoint, signing_key=SIGNING_KEY, retries=self.profile.max_tries - 1 + RESTART_TRIES,
            backoff=lambda n: min(cap, base * 2**n),
        )

    async def _deliver(self, job: QueueJob) -> Terminal:
        async with self._slots:
            delivery = await self._deliverer().deliver({"data": job.data, "body": job.body}, message_id=job.id)
        last = delivery.last
        if delivery.state == "delivered":
            return Terminal("sent", replayed=bool(last.body["replayed"]))
        error = last.body.get("error", {}) if isinstance(last.body, dict) else {}
        if delivery.state == "failed":  # 489 + Upstash-NonRetryable-Error
            return Terminal("fatal", code=error.get("code"), reason=str(error.get("message", "")))
        return Terminal("failed", reason=str(error.get("message", last.body)))

    async def deliver(self, job: QueueJob) -> bool:
        self._deliveries.setdefault(job.id, []).append(asyncio.ensure_future(self._deliver(job)))
        return True

    async def states(self, job_ids: Sequence[str]) -> dict[str, Terminal | None]:
        out: dict[str, Terminal | None] = {}
        for job_id in job_ids:
            tasks = self._deliveries.get(job_id, [])
            if not tasks or not all(t.done() for t in tasks):
                out[job_id] = None
                continue
            out[job_id] = tasks[-1].result()  # the latest delivery's, as a queue keeps one state per job
        return out

    async def deliver_twice_at_once(self, job: QueueJob) -> list[Terminal]:
        return list(await asyncio.gather(self._deliver(job), self._deliver(job)))
