"""A worker process for the multi-process tests: sends jobs through a shared ledger,
``--ledger URL`` (any URL ``ledger_from_url`` takes: redis://, postgresql://...) or
``--redis URL`` (the same as ``--ledger`` with a redis:// URL).

It behaves like a queue worker that redelivers: a job that raises RetryableError is
tried again (after a short pause) until it is sent or fatal. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from idemsend import Engine, FatalError, Job, Limits, RetryableError
from idemsend.ledger import ledger_from_url


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--ledger", help="a ledger URL for ledger_from_url")
    where.add_argument("--redis", help="a Redis URL (the same as --ledger)")
    ap.add_argument("--prefix", default="idemsend")
    ap.add_argument("--api-key", default="test-api-key")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--lease", type=float, default=30.0)
    ap.add_argument("--body-tag", default="v1")
    ap.add_argument("--deadline", type=float, default=60.0)
    args = ap.parse_args()
    summary = {"sent": 0, "replayed": 0, "from_ledger": 0, "retryable": 0, "fatal": 0}
    stop_at = time.monotonic() + args.deadline
    engine = Engine(
        args.url, key="welcome:{user_id}:{job_id}", api_key=args.api_key, lease=args.lease,
        ledger=ledger_from_url(args.ledger or args.redis, prefix=args.prefix),
        limits=Limits(max_in_flight=args.concurrency),
    )
    sem = asyncio.Semaphore(args.concurrency)

    async def run(i: int) -> None:
        job = Job(f"job-{i}", {"user_id": f"u{i}"})
        body = {"to": [f"u{i}@example.com"], "tag": args.body_tag}
        while time.monotonic() < stop_at:
            async with sem:
                try:
                    result = await engine.send(job, body)
                except RetryableError:
                    summary["retryable"] += 1
                except FatalError:
                    summary["fatal"] += 1
                    return
                else:
                    summary["from_ledger" if result.from_ledger else "replayed" if result.replayed else "sent"] += 1
                    return
            await asyncio.sleep(0.05)

    async with engine:
        print("started", flush=True)
        await asyncio.gather(*(run(i) for i in range(args.first, args.first + args.jobs)))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
