"""The ``idemsend`` command: demo, mock-provider, inspect, clear, chaos."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idemsend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="an at-least-once queue against a faulty in-process provider")
    demo.add_argument("--jobs", type=_positive, default=500)
    demo.add_argument("--dup-rate", type=_rate, default=0.3, help="share of jobs delivered twice")
    demo.add_argument("--fault-rate", type=_rate, default=0.1, help="share of requests that meet a fault")
    demo.add_argument("--concurrency", type=_positive, default=100)
    demo.add_argument("--no-ledger", action="store_true", help="run without the MemoryLedger")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--quiet", action="store_true", help="no progress output")

    mock = sub.add_parser("mock-provider", help="serve the MockProvider (the Sendoka contract)")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8025)
    mock.add_argument("--api-key", default=None, help="require this bearer token (default: accept any)")
    mock.add_argument("--processing-delay", type=float, default=0.0)
    mock.add_argument("--window", type=float, default=24 * 3600.0, help="seconds a key is remembered")
    mock.add_argument("--rate-5xx", type=_rate, default=0.0)
    mock.add_argument("--rate-429", type=_rate, default=0.0)
    mock.add_argument("--rate-lost", type=_rate, default=0.0)
    mock.add_argument("--rate-in-flight", type=_rate, default=0.0)
    mock.add_argument("--uvloop", action="store_true", help="run on uvloop if it is installed")

    chaos = sub.add_parser(
        "chaos", help="exactly-once sends per queue under duplicates, faults, kills and a Redis restart"
    )
    chaos.add_argument("--jobs", type=_positive, default=10_000, help="jobs per queue")
    chaos.add_argument("--queues", default="arq,rq,qstash")
    chaos.add_argument("--dup-rate", type=_rate, default=0.3)
    chaos.add_argument("--kills", type=int, default=3, help="workers SIGKILLed per queue during the run")
    chaos.add_argument("--workers", type=_positive, default=3, help="worker processes per queue (arq, RQ)")
    chaos.add_argument("--seed", type=int, default=None)
    chaos.add_argument("--adapters", default=None, help="the adapters/ folder of a checkout")
    chaos.add_argument("--quiet", action="store_true")

    inspect = sub.add_parser("inspect", help="print a RedisLedger record")
    inspect.add_argument("key")
    inspect.add_argument("--redis", required=True, help="redis:// URL of the ledger")
    inspect.add_argument("--prefix", default="idemsend")

    clear = sub.add_parser(
        "clear",
        help="remove a key's fatal record from a RedisLedger, so its job can run again (done records are kept)",
    )
    clear.add_argument("key")
    clear.add_argument("--redis", required=True, help="redis:// URL of the ledger")
    clear.add_argument("--prefix", default="idemsend")
    return parser


async def _clear(url: str, key: str, prefix: str) -> tuple[bool, str]:
    from .ledger._redis import RedisLedger

    ledger = RedisLedger.from_url(url, prefix=prefix)
    try:
        record = await ledger.get(key)
        if record is None:
            return False, f"no record for key {key!r}"
        if record.state != "fatal":
            return False, (
                f"key {key!r} is {record.state}, not fatal: only fatal records are cleared"
                " (clearing a done or in-flight record could let the job send twice)"
            )
        if not await ledger.clear(key):
            return False, f"key {key!r} changed while clearing it; nothing was cleared"
        return True, f"cleared the fatal record of key {key!r} ({record.code}: {record.message})"
    finally:
        await ledger.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        report = asyncio.run(
            run_demo(
                jobs=args.jobs, dup_rate=args.dup_rate, fault_rate=args.fault_rate,
                concurrency=args.concurrency, ledger=not args.no_ledger, seed=args.seed,
                progress=not args.quiet,
            )
        )
        print(report.table())
        return 0 if report.ok else 1
    if args.command == "mock-provider":
        from .testing._mock import Faults, run

        if args.uvloop:
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                print("uvloop is not installed; using asyncio's loop", file=sys.stderr)
        run(
            host=args.host, port=args.port, api_key=args.api_key, processing_delay=args.processing_delay,
            window=args.window,
            faults=Faults(
                rate_5xx=args.rate_5xx, rate_429=args.rate_429, rate_lost=args.rate_lost,
                rate_in_flight=args.rate_in_flight,
            ),
        )
        return 0
    if args.command == "chaos":
        from ._chaos import QUEUES, run_chaos, table

        queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
        unknown = set(queues) - set(QUEUES)
        if unknown:
            print(f"unknown queue(s) {sorted(unknown)}; known: {', '.join(QUEUES)}", file=sys.stderr)
            return 2
        reports = asyncio.run(run_chaos(
            queues, jobs=args.jobs, dup_rate=args.dup_rate, kills=args.kills, workers=args.workers, seed=args.seed,
            adapters=args.adapters, progress=not args.quiet,
        ))
        print(table(reports))
        return 0 if all(not r.violations for r in reports) else 1
    if args.command == "inspect":
        from .ledger._redis import inspect_record

        record = asyncio.run(inspect_record(args.redis, args.key, prefix=args.prefix))
        if record is None:
            print(f"no record for key {args.key!r}", file=sys.stderr)
            return 1
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    if args.command == "clear":
        cleared, text = asyncio.run(_clear(args.redis, args.key, args.prefix))
        print(text, file=sys.stdout if cleared else sys.stderr)
        return 0 if cleared else 1
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
