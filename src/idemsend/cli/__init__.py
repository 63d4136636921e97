"""The ``idemsend`` command: demo, mock-provider, inspect, clear, migrate.

Ordinary mistakes (a bad option, a missing extra, a ledger that cannot be reached, a port
in use) are answered in one line that says what to do, with exit status 2 for usage
errors and 1 otherwise; never a traceback. (The chaos run drives the ``adapters/``
projects of a checkout, so it lives with the checkout's tooling: ``python -m harness.chaos``
from the repository root.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import sys
import time
from collections.abc import Callable, Sequence

from .._errors import ConfigError, MissingExtraError
from ..ledger import LedgerUnavailableError

__all__ = ["build_parser", "main", "positive", "rate"]

_FAULTS = ("rate_5xx", "rate_429", "rate_lost", "rate_in_flight")


def rate(text: str) -> float:
    """argparse type: a share between 0 and 1 (``--dup-rate 0.3``), else a one-line error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1 (``--jobs 10000``), else a one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _port(text: str) -> int:
    value = positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {text}")
    return value


def _port_or_zero(text: str) -> int:
    if text.strip() == "0":
        return 0
    return _port(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _version() -> str:
    from .. import __version__

    return f"idemsend {__version__}"


def _ledger_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--ledger", metavar="URL",
        help="the ledger's URL: sqlite:///, redis://, redis+cluster://, postgresql://, dynamodb://",
    )
    where.add_argument("--redis", metavar="URL", help="same as --ledger, for a RedisLedger")
    where.add_argument("--postgres", metavar="DSN", help="same as --ledger, for a PostgresLedger")
    where.add_argument(
        "--dynamodb", metavar="URL",
        help="same as --ledger, for a DynamoDBLedger: dynamodb://TABLE?region=...&endpoint_url=... (or a table name)",
    )
    parser.add_argument("--prefix", default="idemsend", help="the ledger's key prefix (RedisLedger) or namespace")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``idemsend`` command."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="idemsend",
        description="idemsend: safe outbound sends from at-least-once queue workers. See each command's --help.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    demo = sub.add_parser(
        "demo", help="an at-least-once queue against a faulty in-process provider (no server needed)",
        formatter_class=formatter,
    )
    demo.add_argument("--jobs", type=positive, default=500, help="jobs to send")
    demo.add_argument("--dup-rate", type=rate, default=0.3, help="share of jobs delivered twice")
    demo.add_argument("--fault-rate", type=rate, default=0.1, help="share of requests that meet a fault")
    demo.add_argument("--concurrency", type=positive, default=100, help="sends in flight at once")
    demo.add_argument(
        "--no-ledger", action="store_true", help="run without the ledger (a SQLiteLedger on a throwaway file)"
    )
    demo.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.add_argument(
        "--metrics-port", type=_port_or_zero, default=None, metavar="N",
        help="serve the sends' metrics (OpenTelemetryHook) for Prometheus at http://HOST:N/metrics while the demo"
             " runs (0: a free port; the URL is printed). Needs: pip install 'idemsend[otel]' opentelemetry-sdk"
             " opentelemetry-exporter-prometheus",
    )
    demo.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                      help="the address --metrics-port listens on (0.0.0.0: every interface)")
    demo.add_argument(
        "--linger", type=_seconds, default=0.0, metavar="SECONDS",
        help="with --metrics-port: keep serving the metrics this long after the run, to scrape the final counts"
             " (Ctrl-C stops early)",
    )

    mock = sub.add_parser(
        "mock-provider", help="serve the MockProvider: the provider contract as a real HTTP server",
        formatter_class=formatter,
    )
    mock.add_argument("--host", default="127.0.0.1", help="address to listen on")
    mock.add_argument("--port", type=_port, default=8025, help="port to listen on")
    auth = mock.add_mutually_exclusive_group()
    auth.add_argument(
        "--api-key", default="test-api-key",
        help="the bearer token every request must carry (MockProvider() in Python requires the same one)",
    )
    auth.add_argument("--accept-any-key", action="store_true", help="accept any non-empty bearer token")
    mock.add_argument("--processing-delay", type=_seconds, default=0.0, help="seconds each send takes")
    mock.add_argument("--window", type=_seconds, default=24 * 3600.0, help="seconds a key is remembered")
    mock.add_argument("--rate-5xx", type=rate, default=0.0, help="share of requests answered 503")
    mock.add_argument("--rate-429", type=rate, default=0.0, help="share of requests answered 429")
    mock.add_argument("--rate-lost", type=rate, default=0.0, help="share of sends whose response is dropped")
    mock.add_argument("--rate-in-flight", type=rate, default=0.0, help="share of requests answered IN_FLIGHT")
    mock.add_argument("--uvloop", action="store_true", help="run on uvloop if it is installed")

    inspect = sub.add_parser("inspect", help="print a key's ledger record", formatter_class=formatter)
    inspect.add_argument("key", help="the idempotency key")
    _ledger_options(inspect)

    clear = sub.add_parser(
        "clear", help="remove a key's fatal ledger record, so its job can run again (done records are kept)",
        formatter_class=formatter,
    )
    clear.add_argument("key", help="the idempotency key")
    _ledger_options(clear)
    clear.add_argument(
        "--force", action="store_true",
        help="also clear a STALE_REPLAY or IDEMPOTENCY_MISMATCH record (its send may have run: check first)",
    )

    migrate = sub.add_parser(
        "migrate", help="create the ledger's tables (PostgresLedger; DynamoDBLedger: its table, TTL on)",
        formatter_class=formatter,
    )
    _ledger_options(migrate)
    migrate.add_argument(
        "--qstash-guard", action="store_true",
        help="also create the QStash replay guard's table beside a PostgreSQL ledger's (<table>_jti)",
    )
    return parser


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    metrics = None
    if args.metrics_port is not None:
        from ._metrics import MissingMetricsPackages, serve_metrics

        try:
            metrics = serve_metrics(args.metrics_host, args.metrics_port)
        except MissingMetricsPackages as exc:
            return _fail(str(exc), 2)
        except OSError as exc:
            where = f"{args.metrics_host}:{args.metrics_port}"
            if exc.errno == errno.EADDRINUSE:
                return _fail(f"port {args.metrics_port} on {args.metrics_host} is in use: pick another with"
                             " --metrics-port")
            return _fail(f"cannot serve metrics on {where}: {exc.strerror or exc}")
        print(f"serving Prometheus metrics at {metrics.url}", flush=True)
    try:
        report = asyncio.run(
            run_demo(
                jobs=args.jobs, dup_rate=args.dup_rate, fault_rate=args.fault_rate,
                concurrency=args.concurrency, ledger=not args.no_ledger, seed=args.seed,
                progress=not args.quiet, hooks=[metrics.hook] if metrics is not None else [],
            )
        )
        print(report.table(), flush=True)
        status = 0 if report.ok else 1
        if metrics is not None and args.linger > 0:
            print(f"serving the final metrics at {metrics.url} for {args.linger:g} s more (Ctrl-C to stop)",
                  flush=True)
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the linger, not the demo's verdict
                time.sleep(args.linger)
        return status
    finally:
        if metrics is not None:
            metrics.close()


def _mock_provider(args: argparse.Namespace) -> int:
    from ..testing._mock import Faults, run

    if args.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            print("uvloop is not installed; using asyncio's loop", file=sys.stderr)
    try:
        run(
            host=args.host, port=args.port, api_key=None if args.accept_any_key else args.api_key,
            processing_delay=args.processing_delay,
            window=args.window, faults=Faults(**{name: getattr(args, name) for name in _FAULTS}),
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _fail(f"port {args.port} on {args.host} is in use: pick another with --port")
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from . import _inspect

    url = args.ledger or args.redis or args.postgres or _dynamodb_url(args.dynamodb)
    if args.command == "inspect":
        ok, text = asyncio.run(_inspect.inspect(url, args.key, args.prefix))
    elif args.command == "clear":
        ok, text = asyncio.run(_inspect.clear(url, args.key, args.prefix, force=args.force))
    else:
        ok, text = asyncio.run(_inspect.migrate(url, args.prefix, qstash_guard=args.qstash_guard))
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _dynamodb_url(value: str) -> str:
    """``--dynamodb``: a ``dynamodb://`` URL, or a bare table name (region and credentials
    from botocore's usual chain)."""
    if "://" in value:
        return value
    return f"dynamodb://{value}"


def _fail(text: str, status: int = 1) -> int:
    print(f"idemsend: {text}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``idemsend`` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and args.linger and args.metrics_port is None:
        parser.error("--linger keeps the metrics served after the run: it needs --metrics-port")
    if args.command == "mock-provider":
        rates = {name: getattr(args, name) for name in _FAULTS}
        if sum(rates.values()) > 1.0 + 1e-9:
            parser.error(f"the fault rates add up to {sum(rates.values()):g}; they must add up to at most 1")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "demo": _demo, "mock-provider": _mock_provider, "inspect": _ledger, "clear": _ledger, "migrate": _ledger,
    }
    try:
        return commands[args.command](args)
    except MissingExtraError as exc:
        return _fail(str(exc), 2)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except LedgerUnavailableError as exc:
        return _fail(f"cannot reach the ledger: {exc} (is the server running, and the URL right?)")
    except KeyboardInterrupt:
        return 130
