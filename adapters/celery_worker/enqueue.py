"""Enqueue welcome emails for the Celery worker: `python enqueue.py --jobs 10 [--wait]`.

Each job gets a task id of its own making (`welcome-user-3`): enqueueing the same user
again is the same job, so idemsend answers it with the first send.
"""

from __future__ import annotations

import argparse

from tasks import send_email


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--prefix", default="welcome", help="task ids are PREFIX-user-N")
    ap.add_argument("--wait", action="store_true", help="wait for each result and print it")
    args = ap.parse_args()
    results = []
    for i in range(args.jobs):
        user = f"user-{i}"
        if args.wait:  # an earlier run's stored result would answer at once
            send_email.AsyncResult(f"{args.prefix}-{user}").forget()
        result = send_email.apply_async(
            ({"user_id": user}, {"to": [f"{user}@example.com"], "template": "welcome"}),
            task_id=f"{args.prefix}-{user}",
        )
        print("enqueued", result.id)
        results.append(result)
    if args.wait:
        for result in results:
            print(result.id, result.get(timeout=120, propagate=False))


if __name__ == "__main__":
    main()
