"""Enqueue welcome emails for the arq worker: `python enqueue.py --jobs 10`."""

from __future__ import annotations

import argparse
import asyncio
import os

from arq import create_pool
from arq.connections import RedisSettings


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    args = ap.parse_args()
    redis = await create_pool(RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")))
    for i in range(args.jobs):
        job = await redis.enqueue_job(
            "send_email", {"user_id": f"user-{i}"}, {"to": [f"user-{i}@example.com"], "template": "welcome"},
            _queue_name=os.environ.get("ARQ_QUEUE", "arq:queue"),
        )
        print("enqueued", job.job_id if job else "(duplicate)")
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
