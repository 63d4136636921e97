"""The ``idemsend`` command: demo, mock-provider, inspect, clear.

(The chaos run drives the ``adapters/`` projects of a checkout, so it lives with the
checkout's tooling: ``python -m harness.chaos`` from the repository root.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


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
    parser = argparse.ArgumentParser(
        prog="idemsend", description="idemsend: demo, mock-provider, inspect, clear (see each command's --help)"
    )
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
    clear.add_argument(
        "--force", action="store_true",
        help="also clear a STALE_REPLAY or IDEMPOTENCY_MISMATCH record (its send may have run: check first)",
    )
    return parser


def _demo(args: argparse.Namespace) -> int:
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


def _mock_provider(args: argparse.Namespace) -> int:
    from ..testing._mock import Faults, run

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


def _ledger(args: argparse.Namespace) -> int:
    from . import _inspect

    if args.command == "inspect":
        ok, text = asyncio.run(_inspect.inspect(args.redis, args.key, args.prefix))
    else:
        ok, text = asyncio.run(_inspect.clear(args.redis, args.key, args.prefix, force=args.force))
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"demo": _demo, "mock-provider": _mock_provider, "inspect": _ledger, "clear": _ledger}
    return commands[args.command](args)
