"""What the RedisLedger costs Redis per send, beside the least a ledger could cost it.

    .venv/bin/python benchmarks/redis_ledger.py [--sends 20000] [--concurrency 1,10,100,1000] [--repeat 3]

No HTTP and no provider: only the ledger's own calls, so what Redis spends is not hidden
behind the provider. It starts a throwaway redis-server (``idemsend.testing.RedisServer``)
and, at each concurrency, times in one process:

  happy    RedisLedger: claim a new key, then complete it (one send's ledger work)
  replay   RedisLedger: claim a key already done (a redelivery answered from the ledger)
  floor    redis-py alone: ``SET key value NX GET`` then ``SET key done XX``, pipelined the
           way group commit batches (every call of one loop turn in one round trip): the
           two string commands a claim and a fenced complete cannot go below

Reported per cell (the median of ``--repeat`` runs): operations/s, Redis CPU per send (INFO
cpu, user + sys), commands Redis executed per send (INFO commandstats: a script's own
``redis.call``s included), script calls per send, sends per batch (``on_batch``: the mean
number of ledger calls one round trip carried), Redis's own ``usec_per_call`` per command,
and the client's p50 / p99 / p99.9 latency per send. CPU and latency are wall-clock
measures on a shared machine: compare rows of one run, never runs of different days.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from idemsend import canonical_body, fingerprint  # noqa: E402
from idemsend.cli import positive  # noqa: E402
from idemsend.testing import Progress, RedisServer  # noqa: E402

VARIANTS = ("happy", "replay", "floor")
BODY = canonical_body({"to": ["ada@example.com"], "template": "welcome", "data": {"name": "Ada"}})
FP = fingerprint(BODY)
RESPONSE = {"id": "em_0123456789abcdef", "status": 200, "response": {"id": "em_0123456789abcdef"}}


@dataclass
class Cell:
    """One variant at one concurrency, one run."""

    sends: int
    seconds: float
    redis_cpu: float
    calls: dict[str, int]
    usec: dict[str, float]
    batches: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def per_send(self, value: float) -> float:
        return value / self.sends


async def _redis_stats(client: Any) -> tuple[float, dict[str, int], dict[str, float]]:
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    calls: dict[str, int] = {}
    usec: dict[str, float] = {}
    for name, row in stats.items():
        command = name.removeprefix("cmdstat_")
        calls[command] = int(row["calls"])
        usec[command] = float(row["usec"])
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls, usec


#: Commands the measuring itself runs.
_OWN = {"info", "config|resetstat", "ping", "client|setinfo", "hello", "select", "script|load", "command",
        "command|docs", "flushall"}


async def _drive(op: Callable[[int], Awaitable[None]], count: int, concurrency: int, latencies: list[float]) -> float:
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def run_cell(url: str, variant: str, sends: int, concurrency: int) -> Cell:
    import redis.asyncio as aioredis

    from idemsend.ledger import RedisLedger

    admin = aioredis.Redis.from_url(url)
    await admin.flushall()
    batches: list[int] = []
    run = uuid.uuid4().hex[:8]
    ledger = RedisLedger.from_url(url, prefix=f"b{run}", on_batch=batches.append)
    floor = aioredis.Redis.from_url(url)
    await ledger.start()
    pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
    flushes: set[asyncio.Task[None]] = set()

    async def happy(i: int) -> None:
        key, token = f"k{i}", f"t{i}"
        await ledger.claim(key=key, job_id=f"j{i}", payload=BODY, fingerprint=FP, token=token, lease=30)
        await ledger.complete(key=key, token=token, response=RESPONSE)

    async def replay(i: int) -> None:
        await ledger.claim(key=f"k{i % 1000}", job_id=f"j{i % 1000}", payload=BODY, fingerprint=FP,
                           token=f"r{i}", lease=30)

    # The floor batches like group commit: the calls of one loop turn go out as one pipeline.
    def start_flush() -> None:
        task = asyncio.ensure_future(flush())
        flushes.add(task)
        task.add_done_callback(flushes.discard)

    async def floor_call(command: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not pending:
            loop.call_soon(start_flush)
        pending.append((command, future))
        await future

    async def flush() -> None:
        batch = list(pending)
        pending.clear()
        batches.append(len(batch))
        pipe = floor.pipeline(transaction=False)
        for command, _ in batch:
            pipe.execute_command(*command)
        results = await pipe.execute()
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    async def floor_send(i: int) -> None:
        key = f"f{run}:{i}"
        await floor_call(("SET", key, BODY, "NX", "GET", "EX", 604800))
        await floor_call(("SET", key, b"done", "XX", "EX", 604800))

    op = {"happy": happy, "replay": replay, "floor": floor_send}[variant]
    if variant == "replay":  # the done records a redelivery finds
        await _drive(happy, 1000, min(concurrency, 100), [])
    await _drive(op, min(200, sends // 10), concurrency, [])  # warm-up
    batches.clear()
    cpu0, calls0, usec0 = await _redis_stats(admin)
    latencies: list[float] = []
    seconds = await _drive(op, sends, concurrency, latencies)
    cpu1, calls1, usec1 = await _redis_stats(admin)
    await ledger.aclose()
    await floor.aclose()
    await admin.aclose()
    calls = {k: v - calls0.get(k, 0) for k, v in calls1.items() if k not in _OWN and v - calls0.get(k, 0)}
    usec = {k: usec1[k] - usec0.get(k, 0.0) for k in calls}
    return Cell(sends, seconds, cpu1 - cpu0, calls, usec, batches, latencies)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _usec_per_call(cell: Cell, command: str) -> float:
    calls = cell.calls.get(command, 0)
    return cell.usec.get(command, 0.0) / calls if calls else 0.0


def summarise(cells: list[Cell]) -> dict[str, Any]:
    """The median over the repeats of each measure."""
    def med(f: Callable[[Cell], float]) -> float:
        return statistics.median(f(c) for c in cells)

    commands = sorted({k for c in cells for k in c.calls})
    scripts = ("evalsha", "eval", "fcall")
    return {
        "ops_per_s": med(lambda c: c.sends / c.seconds),
        "redis_cpu_us": med(lambda c: c.per_send(c.redis_cpu) * 1e6),
        "commands": med(lambda c: c.per_send(sum(c.calls.values()))),
        "scripts": med(lambda c: c.per_send(sum(v for k, v in c.calls.items() if k in scripts))),
        "batch": med(lambda c: statistics.fmean(c.batches) if c.batches else 0.0),
        "usec_per_call": {k: statistics.median(_usec_per_call(c, k) for c in cells) for k in commands},
        "p50": med(lambda c: _pct(c.latencies, 0.50)),
        "p99": med(lambda c: _pct(c.latencies, 0.99)),
        "p999": med(lambda c: _pct(c.latencies, 0.999)),
    }


def table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| concurrency | variant | ops/s | Redis CPU µs per send | commands per send | scripts per send"
        " | calls per batch | usec_per_call | p50 / p99 / p99.9 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for concurrency, row in results.items():
        for variant, s in row.items():
            per_call = ", ".join(f"{k} {v:.1f}" for k, v in s["usec_per_call"].items())
            lines.append(
                f"| {concurrency} | {variant} | {s['ops_per_s']:,.0f} | {s['redis_cpu_us']:.1f} | {s['commands']:.2f}"
                f" | {s['scripts']:.3f} | {s['batch']:.1f} | {per_call} | {s['p50']:.2f} / {s['p99']:.2f} /"
                f" {s['p999']:.2f} |"
            )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[int, dict[str, dict[str, Any]]]:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict[int, dict[str, dict[str, Any]]] = {}
    bar = Progress(len(concurrencies) * len(VARIANTS) * args.repeat, "redis ledger")
    with RedisServer() as server:
        for concurrency in concurrencies:
            cells: dict[str, list[Cell]] = {v: [] for v in VARIANTS}
            for rep in range(args.repeat):
                order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
                for variant in order:
                    sends = max(200, args.sends // (10 if concurrency == 1 else 1))
                    cells[variant].append(await run_cell(server.url, variant, sends, concurrency))
                    bar.advance()
            results[concurrency] = {v: summarise(cells[v]) for v in VARIANTS}
    bar.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=positive, default=20000, help="sends per cell (a tenth at concurrency 1)")
    ap.add_argument("--concurrency", default="1,10,100,1000")
    ap.add_argument("--repeat", type=positive, default=3)
    args = ap.parse_args()
    print(table(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
