"""A BullMQ worker that sends through idemsend. Run: `python worker.py` (in this folder).

Environment: REDIS_URL (the queue's Redis), BULLMQ_QUEUE (default "emails"), the Engine's
IDEMSEND_URL, IDEMSEND_API_KEY, IDEMSEND_LEDGER_URL, … (see idemsend.adapters.engine_from_env),
and BullMQ's worker settings: BULLMQ_CONCURRENCY (jobs at once, 50), BULLMQ_LOCK_DURATION
(ms, 30000; renewed every half of it while a job runs), BULLMQ_STALLED_INTERVAL (ms, 30000),
BULLMQ_MAX_STALLED_COUNT (default: BULLMQ_MAX_TRIES), BULLMQ_MAX_TRIES (10),
BULLMQ_RETRY_BASE (the first retry's delay when the provider named none, 1.0 s).

SIGTERM or SIGINT stops taking jobs, lets the ones in flight finish, then closes the Engine.
`python worker.py --burst` also stops once the queue has nothing waiting, delayed or active.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from typing import Any

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.bullmq import BullMQAdapter

QUEUE = os.environ.get("BULLMQ_QUEUE", "emails")

idem = BullMQAdapter(
    engine_from_env,
    max_tries=int(os.environ.get("BULLMQ_MAX_TRIES", "10")),
    backoff=QueueBackoff(base=float(os.environ.get("BULLMQ_RETRY_BASE", "1.0"))),
)


async def send_email(job: Any, token: str) -> dict[str, Any]:
    """An ordinary BullMQ processor: `job.data` is {"data": key fields, "body": what is sent}."""
    return await idem.send(job, job.data["data"], job.data["body"])


def options() -> dict[str, Any]:
    """The Worker's options (the adapter adds its backoff strategy and checks them at start)."""
    opts: dict[str, Any] = {
        "connection": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "name": f"{socket.gethostname()}-{os.getpid()}",
        "concurrency": int(os.environ.get("BULLMQ_CONCURRENCY", "50")),
        "lockDuration": int(os.environ.get("BULLMQ_LOCK_DURATION", "30000")),
        "stalledInterval": int(os.environ.get("BULLMQ_STALLED_INTERVAL", "30000")),
    }
    if "BULLMQ_MAX_STALLED_COUNT" in os.environ:
        opts["maxStalledCount"] = int(os.environ["BULLMQ_MAX_STALLED_COUNT"])
    return opts


async def stop_when_empty(stop: asyncio.Event, connection: str) -> None:
    """`--burst`: set `stop` once the queue has had nothing to do for a second."""
    from bullmq import Queue

    queue = Queue(QUEUE, {"connection": connection})
    idle = 0
    try:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            counts = await queue.getJobCounts("wait", "active", "delayed", "prioritized")
            idle = idle + 1 if not any(counts.values()) else 0
            if idle >= 2:
                stop.set()
    finally:
        await queue.close()


async def main() -> None:
    """Run one worker until SIGTERM or SIGINT (or, with --burst, until the queue is empty)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--burst", action="store_true", help="stop once the queue is empty")
    args = ap.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    opts = options()
    print(f"bullmq worker {os.getpid()} on queue {QUEUE!r}", flush=True)
    watcher = asyncio.ensure_future(stop_when_empty(stop, opts["connection"])) if args.burst else None
    try:
        await idem.serve(QUEUE, send_email, opts, stop=stop)  # one Engine per worker process
    finally:
        if watcher is not None:
            watcher.cancel()


if __name__ == "__main__":
    asyncio.run(main())
