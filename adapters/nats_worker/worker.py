"""A NATS JetStream worker that sends through idemsend. Run: `python worker.py` (in this folder).

Environment: NATS_URL (nats://127.0.0.1:4222), NATS_STREAM (required), NATS_DURABLE (required: the
durable pull consumer; created with an explicit ack policy when missing), NATS_SUBJECT (the
filter subject for a consumer created here; default: the stream's subjects), NATS_ACK_WAIT
(seconds, for a consumer created here: 30), NATS_CONCURRENCY (10), NATS_FETCH_WAIT (5),
NATS_HEARTBEAT (default: a third of ack_wait), NATS_MAX_TRIES (10), NATS_RETRY_BASE (1.0),
NATS_SHUTDOWN_TIMEOUT (25), NATS_RESULTS_URL (a Redis URL: each message's final outcome is
written there as JSON under NATS_RESULTS_PREFIX + the stream sequence, for dashboards and the
test harness), and IDEMSEND_URL, IDEMSEND_API_KEY, IDEMSEND_LEDGER_URL, ... (see
idemsend.adapters.engine_from_env). SIGTERM or Ctrl-C: a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.nats import JetStreamConsumer, NatsOutcome

RESULTS_TTL = 7 * 24 * 3600


class Results:
    """Writes each message's final outcome to Redis (a retry is not final: nothing is written)."""

    def __init__(self, url: str, prefix: str) -> None:
        from redis.asyncio import Redis

        self.redis: Any = Redis.from_url(url)
        self.prefix = prefix

    async def write(self, tried: NatsOutcome) -> None:
        if tried.final:  # raising here keeps the message: it is nak'ed, runs again and is written then
            key = f"{self.prefix}{tried.message.stream_seq}"
            await self.redis.set(key, json.dumps(tried.record()), ex=RESULTS_TTL)

    async def close(self) -> None:
        await self.redis.aclose()


def optional(name: str, kind: Any) -> Any:
    value = os.environ.get(name)
    return kind(value) if value else None


async def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"))
    results_url = os.environ.get("NATS_RESULTS_URL")
    results = Results(results_url, os.environ.get("NATS_RESULTS_PREFIX", "idemsend-nats:")) if results_url else None
    create = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, ack_wait=float(os.environ.get("NATS_ACK_WAIT", "30")), max_deliver=-1,
        filter_subject=os.environ.get("NATS_SUBJECT") or None,
    )
    consumer = JetStreamConsumer(
        engine_from_env,  # one Engine for the worker, shared by every message
        stream=os.environ["NATS_STREAM"],
        durable=os.environ["NATS_DURABLE"],
        servers=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        concurrency=int(os.environ.get("NATS_CONCURRENCY", "10")),
        fetch_wait=float(os.environ.get("NATS_FETCH_WAIT", "5")),
        heartbeat=optional("NATS_HEARTBEAT", float),
        max_tries=int(os.environ.get("NATS_MAX_TRIES", "10")),
        backoff=QueueBackoff(base=float(os.environ.get("NATS_RETRY_BASE", "1.0"))),
        shutdown_timeout=float(os.environ.get("NATS_SHUTDOWN_TIMEOUT", "25")),
        on_outcome=results.write if results else None,
        create=create,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    run = asyncio.create_task(consumer.run())
    ready = asyncio.create_task(consumer.ready.wait())
    try:
        await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not run.done() and consumer.plan is not None:
            plan = consumer.plan
            print(
                f"nats worker ready pid={os.getpid()} stream={consumer.stream} durable={consumer.durable}"
                f" ack_window={plan.ack_window:g}s heartbeat={plan.heartbeat_every:g}s"
                f" max_attempts={plan.max_attempts}", flush=True,
            )
        await run
    finally:
        ready.cancel()
        if results is not None:
            await results.close()
    print(f"nats worker stopped pid={os.getpid()} {consumer.stats}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
