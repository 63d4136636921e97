"""One benchmark client run, in its own process: `python clients.py VARIANT --concurrency C ...`.

Every variant sends N keyed POSTs to the same MockProvider with C coroutines pulling from
one counter, after a short warm-up, and prints one JSON line: sends/s, p50/p99 latency,
CPU seconds per 1,000 sends (this process only), peak RSS (this process's lifetime), the
timed window (Unix seconds), and with ``--stats URL,...`` what those Redis servers spent on
the timed sends (CPU microseconds and commands per send, from INFO cpu / commandstats).

Variants:
  raw       aiohttp POST with an Idempotency-Key header: the ceiling
  tenacity  the contract file's hand-written pattern, wrapped in tenacity (what users write today)
  engine    idemsend without a ledger
  memory    idemsend + MemoryLedger
  redis     idemsend + RedisLedger
  idemkit   idemkit's Redis backend (@idempotent) around the same aiohttp POST
  sqlite    idemsend + SQLiteLedger on a throwaway file (synchronous=FULL, group commit)
  sqlite-single  the same, group_commit=False: one transaction (one fsync) per call
  sqlite-normal  the same as sqlite, synchronous=NORMAL (no fsync per commit in WAL mode)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

VARIANTS = ("raw", "tenacity", "engine", "memory", "redis", "idemkit", "sqlite", "sqlite-single", "sqlite-normal")
#: A provider API key of a real key's length: the engine scrubs credentials out of every
#: response, and one under 8 characters ("bench") would make it walk every parsed answer
#: too, which no real key does.
API_KEY = "re_bench_9f8e7d6c5b4a3210"


class Retryable(Exception):
    pass


class Fatal(Exception):
    pass


def body_for(i: int) -> dict[str, Any]:
    return {"from": "welcome@example.com", "to": [f"user-{i}@example.com"], "template": "welcome",
            "variables": {"name": f"User {i}"}}


async def make_sender(variant: str, args: argparse.Namespace, run: str) -> tuple[Callable[[int], Awaitable[Any]], Any]:
    """Returns (send(i), closer)."""
    headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}
    conn_limit = max(args.concurrency, 1)

    if variant in ("raw", "tenacity", "idemkit"):
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conn_limit))

        async def post(key: str, body: dict[str, Any]) -> Any:
            async with session.post(args.url, data=json.dumps(body), headers={**headers, "Idempotency-Key": key}) as r:
                data = await r.json()
                if r.status >= 400:
                    code = (data.get("error") or {}).get("code")
                    if code == "IDEMPOTENCY_IN_FLIGHT" or r.status >= 500:
                        raise Retryable(code)
                    raise Fatal(code)
                return data

        if variant == "raw":
            async def send(i: int) -> Any:
                return await post(f"welcome:user-{i}:{run}-{i}", body_for(i))

            return send, session.close

        if variant == "tenacity":
            from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

            # tenacity is typed where the bench extra is installed, Any where it is not (the dev venv)
            @retry(  # type: ignore[untyped-decorator, unused-ignore]
                retry=retry_if_exception_type(Retryable), wait=wait_random_exponential(multiplier=0.1, max=2),
                stop=stop_after_attempt(5), reraise=True,
            )
            async def send_welcome(job_id: str, user_id: str, i: int) -> Any:
                key = f"welcome:{user_id}:{job_id}"  # stable across retries of this job
                return (await post(key, body_for(i)))["id"]

            async def send(i: int) -> Any:
                return await send_welcome(f"{run}-{i}", f"user-{i}", i)

            return send, session.close

        import redis.asyncio as aioredis
        from idemkit import MethodConfig, idempotent
        from idemkit.backends.redis import RedisBackend

        client = aioredis.Redis.from_url(args.redis)
        backend = RedisBackend(client)

        @idempotent(backend=backend, config=MethodConfig(key_fields=["key"]))  # type: ignore[untyped-decorator]
        async def idem_post(key: str, body: dict[str, Any]) -> Any:
            return await post(key, body)

        async def send(i: int) -> Any:
            return await idem_post(key=f"welcome:user-{i}:{run}-{i}", body=body_for(i))

        async def close() -> None:
            await session.close()
            await client.aclose()

        return send, close

    from idemsend import Engine, Job, Limits
    from idemsend.ledger import Ledger, MemoryLedger, RedisLedger, SQLiteLedger

    ledger: Ledger | None
    if variant.startswith("sqlite"):
        import tempfile

        made = tempfile.mkdtemp(prefix="idemsend-bench-")  # removed when the run closes
        path = f"{made}/ledger.db"
        ledger = SQLiteLedger(path, group_commit=variant != "sqlite-single",
                              synchronous="normal" if variant == "sqlite-normal" else "full")
    elif variant == "redis":
        ledger = RedisLedger.from_url(args.redis, prefix=f"bench-{run}", cluster=args.cluster)
    else:
        ledger = {"engine": None, "memory": MemoryLedger()}[variant]
    engine = await Engine(
        args.url, key="welcome:{user_id}:{job_id}", api_key=args.api_key, ledger=ledger,
        limits=Limits(max_in_flight=conn_limit),
    ).start()

    async def send_through_engine(i: int) -> Any:
        return await engine.send(Job(f"{run}-{i}", {"user_id": f"user-{i}"}), body_for(i))

    async def close_engine() -> None:
        await engine.aclose()
        if variant.startswith("sqlite"):
            import shutil

            shutil.rmtree(made, ignore_errors=True)

    return send_through_engine, close_engine


async def drive(send: Callable[[int], Awaitable[Any]], first: int, count: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(first, first + count))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await send(i)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", choices=VARIANTS)
    ap.add_argument("--url", required=True)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--api-key", default=API_KEY)
    ap.add_argument("--cluster", action="store_true", help="--redis is a node of a Redis Cluster")
    ap.add_argument("--stats", default="", help="Redis URLs (comma-separated) whose CPU and commands to count")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--sends", type=int, default=5000)
    args = ap.parse_args()
    run = uuid.uuid4().hex[:10]
    send, close = await make_sender(args.variant, args, run)
    stats = None
    if args.stats:
        from redis_stats import clients_for, snapshot

        stats = clients_for(args.stats.split(","))
    try:
        warm = min(200, max(args.sends // 10, args.concurrency))
        await drive(send, 0, warm, args.concurrency)
        before = snapshot(stats) if stats else None
        t_start = time.time()
        usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        latencies = await drive(send, warm, args.sends, args.concurrency)
        wall, usage1 = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF)
        t_end = time.time()
        spent = snapshot(stats) - before if stats and before else None
    finally:
        await close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    latencies.sort()
    print(json.dumps({
        "variant": args.variant,
        "concurrency": args.concurrency,
        "sends": args.sends,
        "sends_per_s": args.sends / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "cpu_s_per_1000": 1000 * cpu / args.sends,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "warm": warm, "t_start": t_start, "t_end": t_end,
        **({} if spent is None else {
            "redis_us_per_send": 1e6 * spent.cpu / args.sends,
            "redis_commands_per_send": spent.commands / args.sends,
            "redis_scripts_per_send": spent.scripts / args.sends,
            "redis_calls": spent.calls,
        }),
    }))


if __name__ == "__main__":
    asyncio.run(main())  # the default asyncio loop: what most workers run
    sys.exit(0)
