"""Enqueue welcome emails for the Dramatiq worker: `python enqueue.py --jobs 10`.

Each message's id is the job id, so enqueueing a job again (same --prefix) is a replay."""

from __future__ import annotations

import argparse

from tasks import broker, send_email


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--prefix", default="welcome")
    args = ap.parse_args()
    for i in range(args.jobs):
        message = send_email.message({"user_id": f"user-{i}"}, {"to": [f"user-{i}@example.com"], "template": "welcome"})
        broker.enqueue(message.copy(message_id=f"{args.prefix}-{i}"))
        print("enqueued", f"{args.prefix}-{i}")


if __name__ == "__main__":
    main()
