"""Add welcome emails for the BullMQ worker: `python enqueue.py --jobs 10`.

Each job gets `idem.job_options()`: its `attempts` (BULLMQ_MAX_TRIES), the adapter's backoff
type (so a retry waits as long as the provider asked) and a `jobId` of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid

from bullmq import Queue
from worker import QUEUE, idem


async def main() -> None:
    """Add `--jobs` jobs, each with a jobId of its own."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    args = ap.parse_args()
    queue = Queue(QUEUE, {"connection": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")})
    run = uuid.uuid4().hex[:8]
    try:
        for i in range(args.jobs):
            job = await queue.add(
                "send_email",
                {"data": {"user_id": f"user-{i}"}, "body": {"to": [f"user-{i}@example.com"], "template": "welcome"}},
                idem.job_options(jobId=f"welcome-{run}-{i}"),
            )
            print("enqueued", job.id)
    finally:
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
