"""What OpenTelemetryHook costs: `python benchmarks/otel_overhead.py` (run it with a Python that has
opentelemetry-api and -sdk: `.nox/otel/bin/python benchmarks/otel_overhead.py`).

Five clients send keyed POSTs at `--concurrency` to a MockProvider in its own process:

  raw       aiohttp POST with an Idempotency-Key header (the ceiling)
  engine    idemsend, no hook (today's engine)
  null      idemsend + a hook whose every method does nothing: the engine's hooks seam alone
  nosdk     idemsend + OpenTelemetryHook() with no SDK configured (the API's no-op providers)
  sdk       idemsend + OpenTelemetryHook(tracer_provider, meter_provider) with the SDK:
            SimpleSpanProcessor(InMemorySpanExporter) and an InMemoryMetricReader; the span
            exporter is emptied every 1,000 sends and the reader read at the end, as a real
            exporter would ship them (20,000 kept spans would time the garbage collector)

Interleaved, because a 2% difference drowns in a shared machine's load drift: each repeat is
one fresh client process that holds all five clients and runs `--rounds` rounds; a round
gives each client one block of `--block` sends, in rotated order, after a `gc.collect()`. A
block's wall time gives sends/s, the process's CPU time (user + system) over the block gives
CPU per send. A ratio is taken between blocks of the same round (neighbours in time), and
reported as the median over every round of every repeat, with the range of the per-repeat
medians; absolute numbers are per-repeat medians, [min-max] over repeats. Over the
MockTransport, "fastest block" is the least CPU per send of any block: other processes only
add to a block's CPU time, so on a shared machine it is the estimate closest to the code's own
cost (against the provider a block's CPU time swings too much for that to hold).

Then the same engines over a MockTransport (no sockets, no provider), interleaved the same
way, where the hooks' own cost per send stands out from the network's noise.

With `--instructions` (needs valgrind) it counts instead the instructions each client
executes per send under callgrind, against the provider and over a MockTransport: slow (a
few minutes per client) but the same on a busy machine as on an idle one. A count is the
difference between runs of 500 and 2,500 sends after the same warm-up, so start-up cancels out.

`--quick` makes a run of well under a minute (2 repeats of 4 rounds, smaller blocks): enough
to see the SDK's cost, too short to resolve a 2% difference.

Target: nosdk within 2% of engine (CPU per send).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "src"))

NET_VARIANTS = ("raw", "engine", "null", "nosdk", "sdk")
LOCAL_VARIANTS = ("engine", "null", "nosdk", "sdk")
LABELS = {
    "raw": "raw aiohttp (ceiling)",
    "engine": "idemsend, no hook",
    "null": "idemsend + a hook that does nothing (the seam alone)",
    "nosdk": "idemsend + OpenTelemetryHook, no SDK",
    "sdk": "idemsend + OpenTelemetryHook, SDK + in-memory exporters",
}
API_KEY = "bench-key"
# The run's size: the full run (a few minutes) and --quick (well under a minute on 2 cores).
FULL = {"repeat": 5, "rounds": 8, "block": 2500, "local_block": 5000}
QUICK = {"repeat": 2, "rounds": 4, "block": 600, "local_block": 1500}

Sender = Callable[[int], Awaitable[Any]]
Closer = Callable[[], Awaitable[Any]]


def body_for(i: int) -> dict[str, Any]:
    return {"from": "welcome@example.com", "to": [f"user-{i}@example.com"], "template": "welcome",
            "variables": {"name": f"User {i}"}}


# -- the provider process ------------------------------------------------------------------


def serve(port: int) -> None:
    from idemsend.testing import MockProvider

    async def main() -> None:
        async with MockProvider(port=port, api_key=API_KEY) as provider:
            print(f"listening on {provider.emails_url}", flush=True)
            await asyncio.Event().wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def start_provider(python: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([python, str(HERE), "serve", "--port", str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening" not in line:
        raise RuntimeError(f"the MockProvider did not start: {line!r}")
    return proc, line.split()[-1]


# -- the clients --------------------------------------------------------------------------------


class Sdk:
    """The SDK with in-memory exporters; ``tick()`` after each send empties the span
    exporter every 1,000 sends."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count % 1000 == 0:
            self.exporter.clear()


class NullHook:
    """A hook that does nothing: what remains is the engine's own cost of having a hook."""

    def send_scope(self, info: Any) -> NullHook:
        return self

    def __enter__(self) -> NullHook:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def on_try(self, info: Any) -> None:
        pass

    def on_wait(self, info: Any) -> None:
        pass

    def on_ledger(self, info: Any) -> None:
        pass

    def on_outcome(self, info: Any) -> None:
        pass


def hooks_for(variant: str) -> tuple[list[Any], Sdk | None]:
    if variant == "engine":
        return [], None
    if variant == "null":
        return [NullHook()], None
    from idemsend.contrib.otel import OpenTelemetryHook

    if variant == "nosdk":
        return [OpenTelemetryHook()], None  # the global providers: no SDK was set in this process
    sdk = Sdk()
    return [OpenTelemetryHook(sdk.tracer_provider, sdk.meter_provider)], sdk


async def make_sender(variant: str, url: str | None, concurrency: int, run: str) -> tuple[Sender, Closer]:
    """One client; ``url`` None: the engine over a MockTransport (no sockets)."""
    if variant == "raw":
        import aiohttp

        assert url is not None
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

        async def raw(i: int) -> Any:
            data = json.dumps(body_for(i))
            key = f"welcome:user-{i}:{run}-{i}"
            async with session.post(url, data=data, headers={**headers, "Idempotency-Key": key}) as r:
                return await r.json()

        return raw, session.close

    from idemsend import Engine, Job, Limits, RawResponse, TransportRequest
    from idemsend.testing import MockTransport

    transport = None
    if url is None:
        answer = RawResponse(200, {"Content-Type": "application/json"}, b'{"id":"em_1","object":"email"}')

        def handler(request: TransportRequest) -> RawResponse:
            return answer

        transport = MockTransport(handler)
    hooks, sdk = hooks_for(variant)
    engine = await Engine(
        url or "https://api.example.com/api/v1/emails", key="welcome:{user_id}:{job_id}", api_key=API_KEY,
        limits=Limits(max_in_flight=concurrency), hooks=hooks, transport=transport,
    ).start()

    async def send(i: int) -> Any:
        result = await engine.send(Job(f"{run}-{i}", {"user_id": f"user-{i}"}), body_for(i), queue="bench")
        if transport is not None:
            transport.requests.clear()  # it keeps every request: don't time a growing list
        if sdk is not None:
            sdk.tick()
        return result

    async def close() -> None:
        await engine.aclose()
        if sdk is not None:
            sdk.reader.get_metrics_data()  # the metrics were recorded: read them once, as an exporter would

    return send, close


async def drive(send: Sender, first: int, count: int, concurrency: int) -> None:
    counter = iter(range(first, first + count))

    async def worker() -> None:
        for i in counter:
            await send(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def interleaved(variants: tuple[str, ...], url: str | None, rounds: int, block: int,
                      concurrency: int) -> dict[str, list[dict[str, float]]]:
    """Every variant's blocks, round by round: ``{variant: [{"sends_per_s", "cpu_us"}, ...]}``."""
    run = os.urandom(5).hex()
    clients = {v: await make_sender(v, url, concurrency, f"{run}{v}") for v in variants}
    out: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        for n, (send, _) in enumerate(clients.values()):
            await drive(send, n * 10**9, max(1000, concurrency * 10), concurrency)  # warm-up: connections, caches
        for r in range(rounds):
            for v in variants[r % len(variants):] + variants[: r % len(variants)]:
                gc.collect()  # no variant pays for another's garbage
                first = 10**6 + r * block
                cpu0, wall0 = cpu_seconds(), time.perf_counter()
                await drive(clients[v][0], first, block, concurrency)
                wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
                out[v].append({"sends_per_s": block / wall, "cpu_us": 1e6 * cpu / block})
    finally:
        for _, close in clients.values():
            await close()
    return out


async def count(variant: str, url: str | None, sends: int, concurrency: int) -> None:
    """Warm up, then ``sends`` sends: what ``--instructions`` runs under callgrind."""
    send, close = await make_sender(variant, url, concurrency, os.urandom(5).hex())
    try:
        await drive(send, 0, 1000, concurrency)
        await drive(send, 10**6, sends, concurrency)
    finally:
        await close()


def instructions(variant: str, url: str | None, concurrency: int, sends: tuple[int, int] = (500, 2500)) -> float:
    """Instructions per send of ``variant`` (callgrind's total, differenced over two run lengths)."""
    totals = []
    for n in sends:
        args = ["valgrind", "--tool=callgrind", "--cache-sim=no", "--callgrind-out-file=/dev/null",
                sys.executable, str(HERE), "--concurrency", str(concurrency), "count", variant, "--sends", str(n)]
        out = subprocess.run([*args, *(["--url", url] if url else [])], capture_output=True, text=True, timeout=3600)
        found = [line for line in out.stderr.splitlines() if "Collected" in line]
        if out.returncode != 0 or not found:
            raise RuntimeError(f"callgrind {variant} failed:\n{out.stderr[-3000:]}")
        totals.append(int(found[-1].split()[-1]))
    return (totals[1] - totals[0]) / (sends[1] - sends[0])


def instruction_report(args: argparse.Namespace) -> str:
    proc, url = start_provider(args.provider_python)
    try:
        net = {v: instructions(v, url, args.concurrency) for v in NET_VARIANTS}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    local = {v: instructions(v, None, args.concurrency) for v in LOCAL_VARIANTS}
    lines = [f"Instructions per send under valgrind's callgrind (concurrency {args.concurrency}), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:", "",
             "| client | against the provider | × no hook | over no hook | over a MockTransport | × no hook |"
             " over no hook |",
             "|---|---|---|---|---|---|---|"]
    for v in NET_VARIANTS:
        row = [f"{net[v] / 1000:,.1f}k", f"{net[v] / net['engine']:.3f}×", f"{(net[v] - net['engine']) / 1000:+,.1f}k"]
        if v in local:
            row += [f"{local[v] / 1000:,.1f}k", f"{local[v] / local['engine']:.3f}×",
                    f"{(local[v] - local['engine']) / 1000:+,.1f}k"]
        else:
            row += ["—", "—", "—"]
        lines.append(f"| {LABELS[v]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# -- the driver -------------------------------------------------------------------------------


def child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


Repeats = list[dict[str, list[dict[str, float]]]]  # one per repeat: {variant: [block, ...]}


def per_repeat(repeats: Repeats, variant: str, metric: str) -> list[float]:
    return [statistics.median(b[metric] for b in rep[variant]) for rep in repeats]


def ratio(repeats: Repeats, variant: str, base: str, metric: str) -> str:
    """Median over all rounds of variant/base in the same round, and the range of the per-repeat medians."""
    rounds = [[a[metric] / b[metric] for a, b in zip(rep[variant], rep[base], strict=True)] for rep in repeats]
    overall = statistics.median(x for r in rounds for x in r)
    medians = [statistics.median(r) for r in rounds]
    return f"{overall:.3f}× [{min(medians):.3f}–{max(medians):.3f}]"


def fastest(repeats: Repeats, variant: str) -> float:
    """The least CPU per send of any block: the cost with the least interference from the
    machine's other work (other processes only ever add to a block's CPU time)."""
    return min(b["cpu_us"] for rep in repeats for b in rep[variant])


def cell(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}–{format(max(values), fmt)}]"


def report(args: argparse.Namespace, net: Repeats, local: Repeats) -> tuple[str, float]:
    load_end = os.getloadavg()
    lines = [
        f"otel_overhead {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, load average (1/5/15 min) at the start "
        f"{args.load_start[0]:.2f}/{args.load_start[1]:.2f}/{args.load_start[2]:.2f}, at the end "
        f"{load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}; concurrency {args.concurrency}; "
        f"{args.repeat} repeats (fresh client processes) × {args.rounds} rounds × {args.block:,} sends per variant "
        f"per round, interleaved; {time.perf_counter() - args.started:.0f} s.",
        f"Command: {' '.join(['python', *(os.path.relpath(a) if a == str(HERE) else a for a in sys.argv)])}",
        "",
        "Against a MockProvider in its own process (the client process's CPU only):",
        "",
        "| client | sends/s | CPU µs/send | sends/s × raw | CPU × raw | sends/s × no hook | CPU × no hook"
        " | CPU µs/send over no hook |",
        "|---|---|---|---|---|---|---|---|",
    ]
    net_base = statistics.median(per_repeat(net, "engine", "cpu_us"))
    for v in NET_VARIANTS:
        cpu = per_repeat(net, v, "cpu_us")
        lines.append(
            f"| {LABELS[v]} | {cell(per_repeat(net, v, 'sends_per_s'), ',.0f')} | "
            f"{cell(cpu, '.1f')} | "
            f"{ratio(net, v, 'raw', 'sends_per_s')} | {ratio(net, v, 'raw', 'cpu_us')} | "
            + ("—" if v == "raw" else ratio(net, v, "engine", "sends_per_s")) + " | "
            + ("—" if v == "raw" else ratio(net, v, "engine", "cpu_us")) + " | "
            + ("—" if v in ("raw", "engine") else f"{statistics.median(cpu) - net_base:+.1f}") + " |"
        )
    if local:
        lines += [
            "",
            f"The engine alone over a MockTransport (no sockets, one process; {args.local_block:,} sends per block):",
            "",
            "| engine | CPU µs/send | × no hook | µs/send over no hook | fastest block µs/send"
            " | fastest, over no hook |",
            "|---|---|---|---|---|---|",
        ]
        base = statistics.median(per_repeat(local, "engine", "cpu_us"))
        for v in LOCAL_VARIANTS:
            values = per_repeat(local, v, "cpu_us")
            over = "—" if v == "engine" else f"{statistics.median(values) - base:+.1f}"
            floor = "—" if v == "engine" else f"{fastest(local, v) - fastest(local, 'engine'):+.1f}"
            lines.append(f"| {LABELS[v]} | {cell(values, '.1f')} | {ratio(local, v, 'engine', 'cpu_us')} | {over} | "
                         f"{fastest(local, v):.1f} | {floor} |")
    rounds = [a["cpu_us"] / b["cpu_us"] for rep in net for a, b in zip(rep["nosdk"], rep["engine"], strict=True)]
    nosdk = statistics.median(rounds)
    verdict = "met" if nosdk <= 1.02 else "MISSED"
    if args.quick:
        verdict += " (a --quick run is too short to resolve 2%: run without --quick to check it)"
    lines += ["", f"Target: no SDK within 2% of no hook (CPU per send, against the provider, median of the round"
              f" ratios): {nosdk:.3f}× — {verdict}"]
    return "\n".join(lines), nosdk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--quick", action="store_true",
                    help=f"a short run (under a minute on 2 cores): defaults {QUICK} instead of {FULL}; options given"
                         " explicitly still apply")
    ap.add_argument("--repeat", type=int, help=f"fresh client processes (default {FULL['repeat']})")
    ap.add_argument("--rounds", type=int, help=f"rounds per client process (default {FULL['rounds']})")
    ap.add_argument("--block", type=int,
                    help=f"sends per variant per round, against the provider (default {FULL['block']})")
    ap.add_argument("--local-block", type=int, help="sends per variant per round, over a MockTransport"
                                                    f" (0: skip; default {FULL['local_block']})")
    ap.add_argument("--provider-python", default=sys.executable,
                    help="the Python that runs the MockProvider (one with uvloop makes it a faster ceiling)")
    ap.add_argument("--json", type=Path, help="also write every block's numbers here")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per send under valgrind instead of timing (load-independent, slow)")
    sub = ap.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--url")
    k = sub.add_parser("count")
    k.add_argument("variant", choices=sorted(LABELS))
    k.add_argument("--sends", type=int, required=True)
    k.add_argument("--url")
    args = ap.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    if args.command == "serve":
        serve(args.port)
        return
    if args.command == "count":
        asyncio.run(count(args.variant, args.url, args.sends, args.concurrency))
        return
    if args.instructions:
        print(instruction_report(args))
        return
    if args.command == "client":
        variants = NET_VARIANTS if args.url else LOCAL_VARIANTS
        block = args.block if args.url else args.local_block
        print(json.dumps(asyncio.run(interleaved(variants, args.url, args.rounds, block, args.concurrency))))
        return

    args.load_start, args.started = os.getloadavg(), time.perf_counter()
    common = ["--concurrency", str(args.concurrency), "--rounds", str(args.rounds), "--block", str(args.block),
              "--local-block", str(args.local_block)]
    proc, url = start_provider(args.provider_python)
    net: Repeats = []
    try:
        for rep in range(args.repeat):
            net.append(child(*common, "client", "--url", url))
            summary = {v: round(statistics.median(b["cpu_us"] for b in net[-1][v]), 1) for v in NET_VARIANTS}
            print(f"repeat {rep + 1}/{args.repeat} CPU µs/send: {summary}", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    local: Repeats = []
    if args.local_block:
        for rep in range(args.repeat):
            local.append(child(*common, "client"))
            summary = {v: round(statistics.median(b["cpu_us"] for b in local[-1][v]), 1) for v in LOCAL_VARIANTS}
            print(f"local {rep + 1}/{args.repeat} CPU µs/send: {summary}", file=sys.stderr, flush=True)
    text, _ = report(args, net, local)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"network": net, "in_process": local}, indent=1))


if __name__ == "__main__":
    main()
