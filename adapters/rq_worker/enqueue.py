"""Enqueue welcome emails for the RQ worker: `python enqueue.py --jobs 10`."""

from __future__ import annotations

import argparse
import os

from jobs import idem, send_email
from redis import Redis
from rq import Queue


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--queue", default="emails")
    args = ap.parse_args()
    queue = Queue(args.queue, connection=Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")))
    for i in range(args.jobs):
        job = queue.enqueue(
            send_email, {"user_id": f"user-{i}"}, {"to": [f"user-{i}@example.com"], "template": "welcome"},
            retry=idem.retry(),
        )
        print("enqueued", job.id)


if __name__ == "__main__":
    main()
