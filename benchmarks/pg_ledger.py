"""PostgresLedger throughput, with and without group commit, against raw aiohttp in the same run.

    .nox/postgres/bin/python benchmarks/pg_ledger.py [--concurrency 100] [--sends 4000] [--repeat 3]
        [--dsn postgresql://...] [--provider-python .venv/bin/python]

It starts the MockProvider in its own process (on uvloop where the provider's Python has
it) and, unless ``--dsn`` is given, a throwaway PostgreSQL (``idemsend.testing.PostgresServer``,
default settings: fsync and synchronous_commit on). Each cell is a fresh client process
that sends N keyed POSTs with C coroutines after a warm-up, one variant at a time, in
rotated order each repeat:

  raw         aiohttp POST with an Idempotency-Key header: the ceiling
  pg          idemsend + PostgresLedger (group commit: concurrent claims share a statement)
  pg-single   idemsend + PostgresLedger(group_commit=False): every call its own statement

Reported per variant (median of the repeats): sends/s and its ratio to raw, p50/p99 latency, the
client's CPU per 1,000 sends, ledger statements (round trips) per send, and the
database's CPU per send: utime + stime from ``/proc/<pid>/stat`` of the postmaster and
every process it started (the backends, the WAL writer, the checkpointer...), read
before and after the timed part. The postmaster is found as the parent of the
client's own backend (``pg_backend_pid()``), so the database must run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

VARIANTS = ("raw", "pg", "pg-single")
LABELS = {
    "raw": "raw aiohttp (ceiling)",
    "pg": "idemsend + PostgresLedger (group commit)",
    "pg-single": "idemsend + PostgresLedger, group_commit=False",
}
TICK = os.sysconf("SC_CLK_TCK")


# -- the database's CPU ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int]:
    """(parent pid, utime + stime in ticks) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def server_ticks(postmaster: int) -> dict[int, int]:
    """CPU ticks of the postmaster and of every process it started, by pid."""
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent, used = _stat(int(entry))
        except (OSError, IndexError, ValueError):
            continue
        if int(entry) == postmaster or parent == postmaster:
            ticks[int(entry)] = used
    return ticks


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds used between two readings (a process that started meanwhile counts from 0)."""
    return sum(used - before.get(pid, 0) for pid, used in after.items()) / TICK


# -- one client run (a child process) ------------------------------------------------------------


def body_for(i: int) -> dict[str, Any]:
    return {"from": "welcome@example.com", "to": [f"user-{i}@example.com"], "template": "welcome",
            "variables": {"name": f"User {i}"}}


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


async def client(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import asyncpg

    from idemsend import Engine, Job, Limits
    from idemsend.ledger import PostgresLedger

    run = uuid.uuid4().hex[:10]
    con = await asyncpg.connect(args.dsn)
    try:
        postmaster, _ = _stat(int(await con.fetchval("SELECT pg_backend_pid()")))
    finally:
        await con.close()
    ledger: PostgresLedger | None = None
    if args.variant == "raw":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))
        headers = {"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"}

        async def send(i: int) -> Any:
            key = f"welcome:user-{i}:{run}-{i}"
            data, sent = json.dumps(body_for(i)), {**headers, "Idempotency-Key": key}
            async with session.post(args.url, data=data, headers=sent) as r:
                return await r.json()

        close: Callable[[], Awaitable[Any]] = session.close
    else:
        ledger = PostgresLedger.from_url(
            args.dsn, table=f"bench_{run}_ledger", create_table=True, group_commit=args.variant == "pg",
            pool_size=max(8, args.concurrency // 4) if args.variant == "pg-single" else 8,
        )
        engine = await Engine(
            args.url, key="welcome:{user_id}:{job_id}", api_key=args.api_key, ledger=ledger,
            limits=Limits(max_in_flight=args.concurrency),
        ).start()

        async def send(i: int) -> Any:
            return await engine.send(Job(f"{run}-{i}", {"user_id": f"user-{i}"}), body_for(i))

        close = engine.aclose
    try:
        warm = min(500, max(args.sends // 10, args.concurrency))
        await drive(send, 0, warm, args.concurrency)
        statements0 = ledger.statements if ledger is not None else 0
        db0, usage0, wall0 = server_ticks(postmaster), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        latencies = await drive(send, warm, args.sends, args.concurrency)
        wall, usage1 = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF)
        db1 = server_ticks(postmaster)
        statements = (ledger.statements - statements0) if ledger is not None else 0
    finally:
        await close()
    if ledger is not None:
        con = await asyncpg.connect(args.dsn)
        try:
            await con.execute(f'DROP TABLE IF EXISTS "bench_{run}_ledger", "bench_{run}_ledger_jobs"')
        finally:
            await con.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    latencies.sort()
    return {
        "variant": args.variant,
        "concurrency": args.concurrency,
        "sends": args.sends,
        "sends_per_s": args.sends / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "cpu_s_per_1000": 1000 * cpu / args.sends,
        "db_cpu_ms_per_send": 1000 * cpu_seconds(db0, db1) / args.sends,
        "statements_per_send": statements / args.sends,
    }


# -- the parent: servers, rotation, the report ------------------------------------------------------


def start_provider(python: str) -> tuple[subprocess.Popen[bytes], str]:
    from idemsend.testing import free_port

    port = free_port()
    proc = subprocess.Popen(
        [python, "-m", "idemsend.cli", "mock-provider", "--port", str(port), "--uvloop", "--api-key", "bench"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if line.startswith("uvloop is not installed"):  # that Python has no uvloop: it runs on asyncio's loop
        line = proc.stdout.readline().decode()
    if "listening" not in line:
        raise RuntimeError(f"the MockProvider did not start: {line}")
    return proc, f"http://127.0.0.1:{port}/api/v1/emails"


def child(variant: str, args: argparse.Namespace, url: str, dsn: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--url", url, "--dsn", dsn, "--concurrency",
         str(args.concurrency), "--sends", str(args.sends)],
        capture_output=True, text=True, timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def report(cells: dict[str, list[dict[str, Any]]], args: argparse.Namespace, where: str) -> str:
    med = {v: {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
           for v, runs in cells.items()}
    raw = med["raw"]["sends_per_s"]
    lines = [
        f"PostgresLedger at concurrency {args.concurrency}, {args.sends} sends per run, median of {args.repeat}"
        f" runs; {where}; MockProvider in its own process.",
        "",
        "| client | sends/s (× raw) | runs | p50 / p99 ms | client CPU s per 1,000 | ledger statements per send"
        " | database CPU ms per send |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, runs in cells.items():
        m = med[v]
        # each run against the raw run of the same repeat (the machine's load moves between repeats)
        paired = sorted(r["sends_per_s"] / q["sends_per_s"] for r, q in zip(runs, cells["raw"], strict=True))
        each = ", ".join(f"{r['sends_per_s']:,.0f}" for r in runs)
        if v != "raw":
            each += f" ({paired[0]:.2f}–{paired[-1]:.2f}× raw of the same repeat)"
        lines.append(
            f"| {LABELS[v]} | {m['sends_per_s']:,.0f} ({m['sends_per_s'] / raw:.2f}×) |"
            f" {each} | {m['p50_ms']:.1f} / {m['p99_ms']:.1f} |"
            f" {m['cpu_s_per_1000']:.3f} | {m['statements_per_send']:.3f} | {m['db_cpu_ms_per_send']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--api-key", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help="a PostgreSQL on this machine (default: a throwaway one)")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--sends", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--provider-python", default=sys.executable, help="the Python that runs the MockProvider")
    ap.add_argument("--json", type=Path, help="also write the runs as JSON here")
    args = ap.parse_args()
    if args.child:
        args.variant = args.child
        print(json.dumps(asyncio.run(client(args))))
        return

    from idemsend.testing import PostgresServer

    server = None
    if args.dsn:
        dsn, where = args.dsn, "the PostgreSQL at --dsn"
    else:
        server = PostgresServer().start()
        dsn, where = server.dsn, "a throwaway PostgreSQL 15 (fsync and synchronous_commit on)"
    provider, url = start_provider(args.provider_python)
    cells: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    try:
        for rep in range(args.repeat):
            for v in VARIANTS[rep % len(VARIANTS):] + VARIANTS[: rep % len(VARIANTS)]:
                cells[v].append(child(v, args, url, dsn))
                print(f"  {v}: {cells[v][-1]['sends_per_s']:,.0f} sends/s", file=sys.stderr)
    finally:
        provider.terminate()
        provider.wait()
        if server is not None:
            server.cleanup()
    print(report(cells, args, where))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cells": cells}, indent=2))


if __name__ == "__main__":
    main()
