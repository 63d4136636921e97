"""A Temporal worker that sends through idemsend. Run: `python worker.py` (in this folder).

Environment: TEMPORAL_ADDRESS (host:port, default 127.0.0.1:7233), TEMPORAL_NAMESPACE
(default), TEMPORAL_TASK_QUEUE (emails), TEMPORAL_MAX_CONCURRENT (activities at once),
TEMPORAL_MAX_CACHED_WORKFLOWS (the SDK's sticky cache; the harness sets 0: the Temporal test
server never moves a dead worker's sticky workflow task back to the task queue),
IDEMSEND_URL, IDEMSEND_API_KEY, IDEMSEND_LEDGER_URL (see idemsend.adapters.engine_from_env).
TEMPORAL_GRACEFUL_SHUTDOWN (seconds, default 30). SIGTERM or SIGINT: the worker stops taking
tasks and lets running sends finish for that long; past it, Temporal's worker cancels them
(a cancelled send's key stays claimed, and its next attempt replays it).
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker
from workflows import SendEmail

from idemsend.adapters import engine_from_env
from idemsend.adapters.temporal import TemporalAdapter

idem = TemporalAdapter(engine_from_env)


@activity.defn(name="send_email")
async def send_email(job_id: str | None, data: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """An ordinary activity: ``data`` fills the key template, ``body`` is what is sent. The
    job id is the workflow id + activity id unless the workflow passes one of its own (an id
    as stable as the workflow's: the harness passes its job ids)."""
    return await idem.send(data, body, job_id=job_id)


async def main() -> None:
    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"), namespace=os.environ.get("TEMPORAL_NAMESPACE", "default")
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(
        client, task_queue=os.environ.get("TEMPORAL_TASK_QUEUE", "emails"), workflows=[SendEmail],
        activities=[send_email], max_concurrent_activities=int(os.environ.get("TEMPORAL_MAX_CONCURRENT", "100")),
        max_cached_workflows=int(os.environ.get("TEMPORAL_MAX_CACHED_WORKFLOWS", "1000")),
        graceful_shutdown_timeout=timedelta(seconds=float(os.environ.get("TEMPORAL_GRACEFUL_SHUTDOWN", "30"))),
    )
    async with idem, worker:  # one Engine per worker process; closed after the worker drains
        print("temporal worker ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
