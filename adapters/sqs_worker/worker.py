"""An SQS worker that sends through idemsend. Run: `python worker.py` (in this folder).

Environment: SQS_QUEUE_URL (required), SQS_ENDPOINT_URL (moto or LocalStack; unset: AWS),
AWS_DEFAULT_REGION and the usual AWS credentials, SQS_CONCURRENCY (10), SQS_WAIT_TIME (20),
SQS_VISIBILITY_TIMEOUT (default: the queue's), SQS_HEARTBEAT (default: a third of it),
SQS_MAX_ATTEMPTS (default: 10, or the redrive policy's maxReceiveCount), SQS_RETRY_BASE (1.0),
SQS_GIVE_UP (delete | redrive), SQS_SHUTDOWN_TIMEOUT (25), SQS_RESULTS_URL (a Redis URL:
each message's final outcome is written there as JSON under SQS_RESULTS_PREFIX + MessageId,
for dashboards and the test harness), and IDEMSEND_URL, IDEMSEND_API_KEY, IDEMSEND_LEDGER_URL,
... (see idemsend.adapters.engine_from_env). SIGTERM or Ctrl-C: a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.sqs import SQSConsumer, SQSOutcome

RESULTS_TTL = 7 * 24 * 3600


class Results:
    """Writes each message's final outcome to Redis (a retry is not final: nothing is written)."""

    def __init__(self, url: str, prefix: str) -> None:
        from redis.asyncio import Redis

        self.redis: Any = Redis.from_url(url)
        self.prefix = prefix

    async def write(self, tried: SQSOutcome) -> None:
        if tried.final:  # raising here keeps the message: it runs again and is written then
            await self.redis.set(self.prefix + tried.message.message_id, json.dumps(tried.record()), ex=RESULTS_TTL)

    async def close(self) -> None:
        await self.redis.aclose()


def optional(name: str, kind: Any) -> Any:
    value = os.environ.get(name)
    return kind(value) if value else None


async def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"))
    queue_url = os.environ["SQS_QUEUE_URL"]
    results_url = os.environ.get("SQS_RESULTS_URL")
    results = Results(results_url, os.environ.get("SQS_RESULTS_PREFIX", "idemsend-sqs:")) if results_url else None
    consumer = SQSConsumer(
        engine_from_env,  # one Engine for the worker, shared by every message
        queue_url,
        concurrency=int(os.environ.get("SQS_CONCURRENCY", "10")),
        wait_time=int(os.environ.get("SQS_WAIT_TIME", "20")),
        visibility_timeout=optional("SQS_VISIBILITY_TIMEOUT", int),
        heartbeat=optional("SQS_HEARTBEAT", float),
        max_attempts=optional("SQS_MAX_ATTEMPTS", int),
        backoff=QueueBackoff(base=float(os.environ.get("SQS_RETRY_BASE", "1.0"))),
        give_up=os.environ.get("SQS_GIVE_UP", "delete"),  # type: ignore[arg-type]
        shutdown_timeout=float(os.environ.get("SQS_SHUTDOWN_TIMEOUT", "25")),
        on_outcome=results.write if results else None,
        region_name=os.environ.get("SQS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        endpoint_url=os.environ.get("SQS_ENDPOINT_URL") or None,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    run = asyncio.create_task(consumer.run())
    ready = asyncio.create_task(consumer.ready.wait())
    try:
        await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not run.done():
            print(
                f"sqs worker ready pid={os.getpid()} queue={queue_url} fifo={consumer.fifo}"
                f" visibility={consumer.visibility}s heartbeat={consumer.heartbeat_every:g}s"
                f" max_attempts={consumer.max_attempts}", flush=True,
            )
        await run
    finally:
        ready.cancel()
        if results is not None:
            await results.close()
    print(f"sqs worker stopped pid={os.getpid()} {consumer.stats}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
