"""The benchmark, in one command: `python benchmarks/bench.py` (add `--quick` for a short run).

It starts the MockProvider in its own process (on uvloop when installed) and a throwaway
Redis, then runs, side by side in one run and in fresh processes each, at concurrency
1, 10, 100 and 1,000: raw aiohttp, the hand-written pattern with tenacity, idemsend with
no ledger, with MemoryLedger, with RedisLedger, and idemkit's Redis backend (for the two
on Redis also what Redis spent per send: CPU from INFO cpu, commands from INFO
commandstats). Then end to end through arq, RQ (SimpleWorker) and the QStash handler
against their plain versions; scale-out: 1, 2, 4 and 8 worker processes sharing one Redis,
then a 3-shard Redis Cluster; what a completed send keeps in each ledger's store; and
10,000 sends in flight in one process. Each matrix cell is the median of `--repeat` runs,
taken in rotated order. Results go to benchmarks/results/ as JSON, Markdown and a PNG, and
one line per run is added to benchmarks/results/runs.jsonl (`--summary` tabulates them).
The headline is ratios against raw aiohttp measured in the same run.

The machine's load average is read before and after the run and kept with it; with
`--wait-quiet 0.7` the run waits until the 1-minute load average is below 0.7 first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from clients import API_KEY  # noqa: E402
from redis_stats import clients_for, snapshot  # noqa: E402

from idemsend.testing import Progress, RedisClusterServers, RedisServer, free_port  # noqa: E402

VARIANTS = ("raw", "tenacity", "engine", "memory", "redis", "idemkit")
LABELS = {
    "raw": "raw aiohttp", "tenacity": "hand-written + tenacity", "engine": "idemsend, no ledger",
    "memory": "idemsend + MemoryLedger", "redis": "idemsend + RedisLedger", "idemkit": "idemkit (Redis backend)",
}
SENDS = {1: 400, 10: 2000, 100: 6000, 1000: 10000}
#: The variants that use Redis: what Redis spends on them is counted too.
ON_REDIS = ("redis", "idemkit")
QUEUES = ("arq", "rq", "qstash")
#: What a run needs from the bench extra (uvloop is optional: the provider falls back to asyncio's loop).
BENCH_PACKAGES = ("tenacity", "idemkit", "matplotlib")

# The targets (issue 14), at concurrency 100.
T_REDIS_THROUGHPUT = 0.80  # RedisLedger sends/s >= 0.80x raw
T_REDIS_CPU = 1.20  # RedisLedger client CPU per send <= 1.2x raw
T_REDIS_SERVER_US = 15.0  # Redis CPU per send <= 15 us
T_ENGINE_CPU = 1.03  # no ledger: client CPU per send <= 1.03x raw
T_MEMORY_BYTES = 300.0  # a completed send keeps <= 300 bytes in Redis
T_ADAPTER_CPU = 1.05  # worker CPU per job <= 1.05x the plain job, every queue


def missing(packages: tuple[str, ...]) -> list[str]:
    """The ``packages`` this Python cannot import (the clients run in this Python too)."""
    return [name for name in packages if importlib.util.find_spec(name) is None]


def loadavg() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def wait_quiet(limit: float, longest: float) -> float:
    """Wait (up to ``longest`` seconds) until the 1-minute load average is below ``limit``."""
    deadline = time.monotonic() + longest
    while (load := loadavg()) >= limit and time.monotonic() < deadline:
        print(f"load average {load:.2f} >= {limit}: waiting …", file=sys.stderr)
        time.sleep(30)
    return loadavg()


def start_provider(*extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "idemsend.cli", "mock-provider", "--port", str(port), "--uvloop", "--api-key", API_KEY,
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if line.startswith("uvloop is not installed"):  # that Python has no uvloop: it runs on asyncio's loop
        line = proc.stdout.readline().decode()
    if "listening" not in line:
        raise RuntimeError(f"the MockProvider did not start: {line}")
    return proc, f"http://127.0.0.1:{port}/api/v1/emails"


def child(script: str, *args: str, timeout: float = 600, python: str = sys.executable) -> dict[str, Any]:
    out = subprocess.run([python, str(HERE / script), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def provider_ceiling(url: str, sends: int) -> float:
    """Two raw clients at once (500 in flight each): what the provider process can take."""
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "clients.py"), "raw", "--url", url, "--concurrency", "500",
                          "--sends", str(sends)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        total += json.loads(out.strip().splitlines()[-1])["sends_per_s"]
    return total


def span(values: list[float]) -> list[float]:
    return [min(values), max(values)] if values else []


def matrix(url: str, redis: str, concurrencies: list[int], repeat: int, scale: float) -> dict[str, Any]:
    cells: dict[str, dict[int, list[dict[str, Any]]]] = {v: {c: [] for c in concurrencies} for v in VARIANTS}
    bar = Progress(len(VARIANTS) * len(concurrencies) * repeat, "matrix")
    for c in concurrencies:
        sends = max(50, int(SENDS.get(c, 5000) * scale))
        for rep in range(repeat):
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[: rep % len(VARIANTS)]
            for v in order:
                stats = ("--stats", redis) if v in ON_REDIS else ()
                cells[v][c].append(child("clients.py", v, "--url", url, "--redis", redis, "--concurrency", str(c),
                                         "--sends", str(sends), *stats))
                bar.advance()
    bar.close()
    summary: dict[str, Any] = {}
    for v in VARIANTS:
        for c in concurrencies:
            runs = cells[v][c]
            cell = summary.setdefault(v, {})[str(c)] = {
                "sends_per_s": statistics.median(r["sends_per_s"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "cpu_s_per_1000": statistics.median(r["cpu_s_per_1000"] for r in runs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "runs": [r["sends_per_s"] for r in runs],
                "cpu_runs": [r["cpu_s_per_1000"] for r in runs],
            }
            if v in ON_REDIS:
                for field in ("redis_us_per_send", "redis_commands_per_send", "redis_scripts_per_send"):
                    cell[field] = statistics.median(r[field] for r in runs)
                    cell[field.replace("_per_send", "_runs")] = [r[field] for r in runs]
    for v in VARIANTS:
        for c in concurrencies:
            # ratios per repeat (each repeat runs every variant within a minute or so), and their median
            cell, raw = summary[v][str(c)], summary["raw"][str(c)]
            cell["ratio_runs"] = [a / b for a, b in zip(cell["runs"], raw["runs"], strict=True) if b]
            cell["ratio_to_raw"] = statistics.median(cell["ratio_runs"])
            cell["cpu_ratio_runs"] = [a / b for a, b in zip(cell["cpu_runs"], raw["cpu_runs"], strict=True) if b]
            cell["cpu_ratio_to_raw"] = statistics.median(cell["cpu_ratio_runs"])
    return summary


def end_to_end(url: str, redis: str, repeat: int, scale: float) -> list[dict[str, Any]]:
    plan = [("arq", "raw", 2000), ("arq", "adapter", 2000), ("arq", "ledger", 2000),
            ("rq", "raw", 600), ("rq", "adapter", 600), ("rq", "ledger", 600),
            ("qstash", "raw", 3000), ("qstash", "adapter", 3000)]
    runs: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    bar = Progress(len(plan) * repeat, "end to end")
    for rep in range(repeat):
        # rotate the order each repeat, so no variant always runs first (or after the same one)
        for queue, variant, jobs in plan[rep % len(plan):] + plan[: rep % len(plan)]:
            n = max(50, int(jobs * scale))
            result = child("e2e.py", queue, "--variant", variant, "--jobs", str(n), "--url", url, "--redis", redis)
            if result["completed"] != n:
                raise RuntimeError(f"{queue}/{variant}: {result}")
            runs.setdefault((queue, variant), []).append(result["jobs_per_s"])
            cpu.setdefault((queue, variant), []).append(result["cpu_s_per_1000"])
            bar.advance()
    bar.close()
    rows = []
    for (queue, variant), values in runs.items():
        ratios = [a / b for a, b in zip(values, runs[(queue, "raw")], strict=True)]
        cpu_ratios = [a / b for a, b in zip(cpu[(queue, variant)], cpu[(queue, "raw")], strict=True)]
        rows.append({"queue": queue, "variant": variant, "jobs_per_s": statistics.median(values),
                     "ratio_to_raw": statistics.median(ratios), "runs": values,
                     "cpu_s_per_1000": statistics.median(cpu[(queue, variant)]),
                     "cpu_ratio_to_raw": statistics.median(cpu_ratios), "cpu_runs": cpu[(queue, variant)],
                     "cpu_ratio_runs": cpu_ratios})
    return rows


# -- scale-out -----------------------------------------------------------------------------------


def scale_out(url: str, workers: list[int], sends: int, repeat: int) -> list[dict[str, Any]]:
    """N worker processes (clients.py redis, 100 in flight each) sharing one Redis, then a
    3-shard Cluster: aggregate sends/s over the window where all ran, and what Redis spent
    per send (CPU summed over the shards, commands executed, EVALSHA calls)."""
    rows = []
    bar = Progress(2 * len(workers) * repeat, "scale-out")
    for setup in ("redis", "cluster"):
        store: Any = RedisServer().start() if setup == "redis" else RedisClusterServers(3).start()
        try:
            servers = [store] if setup == "redis" else store.servers
            stats = clients_for([srv.url for srv in servers])
            cluster = ("--cluster",) if setup == "cluster" else ()
            for n in workers:
                points = []
                for _ in range(repeat):
                    before = snapshot(stats)
                    procs = [subprocess.Popen(
                        [sys.executable, str(HERE / "clients.py"), "redis", "--url", url, "--redis", store.url,
                         "--concurrency", "100", "--sends", str(sends), *cluster],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
                    results = []
                    for proc in procs:
                        out, err = proc.communicate(timeout=900)
                        if proc.returncode != 0:
                            raise RuntimeError(f"scale-out worker failed:\n{err[-3000:]}")
                        results.append(json.loads(out.strip().splitlines()[-1]))
                    spent = snapshot(stats) - before
                    every = sum(r["sends"] + r["warm"] for r in results)  # the counters saw warm-ups too
                    window = max(r["t_end"] for r in results) - min(r["t_start"] for r in results)
                    points.append({
                        "sends_per_s": sum(r["sends"] for r in results) / window,
                        "redis_us_per_send": 1e6 * spent.cpu / every,
                        "commands_per_send": spent.commands / every,
                        "scripts_per_send": spent.scripts / every,
                        "client_cpu_s_per_1000": statistics.median(r["cpu_s_per_1000"] for r in results),
                    })
                    bar.advance()
                row: dict[str, Any] = {"setup": setup, "shards": len(servers), "workers": n}
                for field in points[0]:
                    row[field] = statistics.median(p[field] for p in points)
                    row[field + "_runs"] = [p[field] for p in points]
                # one shard is one core: it saturates when its share of the sends costs a second a second
                row["ceiling_per_shard"] = 1e6 / (row["redis_us_per_send"] / len(servers))
                rows.append(row)
        finally:
            store.cleanup()
    bar.close()
    return rows


# -- memory --------------------------------------------------------------------------------------


def postgres_python() -> str | None:
    """A Python that can run the Postgres ledger (has asyncpg): this one, or the nox session's."""
    for python in (sys.executable, str(HERE.parent / ".nox" / "postgres" / "bin" / "python")):
        if Path(python).exists() and subprocess.run([python, "-c", "import asyncpg"],
                                                    capture_output=True).returncode == 0:
            return python
    return None


def memory(scale: float) -> dict[str, Any]:
    """Bytes a completed send keeps, per ledger (benchmarks/memory.py)."""
    out: dict[str, Any] = {}
    n = max(2000, int(100_000 * scale))
    out["redis"] = child("memory.py", "redis", "--sends", str(n))
    out["memory"] = child("memory.py", "memory", "--sends", str(n))
    out["sqlite"] = child("memory.py", "sqlite", "--sends", str(n))
    python = postgres_python()
    if python is None:
        out["postgres"] = {"skipped": "asyncpg is not installed"}
    else:
        try:
            out["postgres"] = child("memory.py", "postgres", "--sends", str(max(2000, int(20_000 * scale))),
                                    python=python)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            out["postgres"] = {"skipped": str(exc).splitlines()[0][:200]}
    return out


# -- the report ----------------------------------------------------------------------------------


def rng(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}" if len(values) > 1 else fmt.format(values[0])


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was measured (median), its range over the repeats, met or not."""
    m = results["matrix"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, runs: list[float], goal: float, higher: bool, fmt: str, unit: str) -> None:
        met = value >= goal if higher else value <= goal
        verdict = f"target {'≥' if higher else '≤'} {fmt.format(goal)}{unit}: {'met' if met else 'MISSED'}"
        out.append({"target": name, "value": value, "runs": runs, "goal": goal, "higher": higher, "met": met,
                    "text": f"{name} {fmt.format(value)}{unit} [repeats {rng(runs, fmt)}{unit}] ({verdict})"})

    if "100" in m["raw"]:
        r, e = m["redis"]["100"], m["engine"]["100"]
        add("RedisLedger throughput", r["ratio_to_raw"], r["ratio_runs"], T_REDIS_THROUGHPUT, True, "{:.2f}", "× raw")
        add("RedisLedger client CPU per send", r["cpu_ratio_to_raw"], r["cpu_ratio_runs"], T_REDIS_CPU, False,
            "{:.2f}", "× raw")
        add("Redis CPU per send", r["redis_us_per_send"], r["redis_us_runs"], T_REDIS_SERVER_US, False, "{:.1f}",
            " µs")
        add("no-ledger client CPU per send", e["cpu_ratio_to_raw"], e["cpu_ratio_runs"], T_ENGINE_CPU, False,
            "{:.2f}", "× raw")
    mem = results.get("memory", {}).get("redis")
    if mem:
        add("Redis memory per completed send", mem["bytes_per_send"], [mem["bytes_per_send"]], T_MEMORY_BYTES,
            False, "{:.0f}", " B")
    for row in results.get("end_to_end", []):
        if row["variant"] == "adapter":
            add(f"{row['queue']} adapter worker CPU per job", row["cpu_ratio_to_raw"], row["cpu_ratio_runs"],
                T_ADAPTER_CPU, False, "{:.2f}", "× plain")
    return out


def markdown(results: dict[str, Any]) -> str:
    m, cs = results["matrix"], results["concurrencies"]
    lines = [
        f"Run {results['date']} on {results['machine']}; load average {results['load_start']:.2f} at the start,"
        f" {results['load_end']:.2f} at the end. MockProvider in its own process (what it takes from two client"
        f" processes at once: {results['provider_ceiling']:,.0f} sends/s). Median of {results['repeat']} runs per"
        " cell; [a–b] is the range over those runs.", "",
        "| client | " + " | ".join(f"c={c} sends/s (× raw)" for c in cs)
        + " | p50 / p99 ms at c=100 | client CPU µs per send at c=100 (× raw) | peak RSS MB |",
        "|---|" + "---|" * (len(cs) + 3),
    ]
    for v in VARIANTS:
        cells = " | ".join(f"{m[v][str(c)]['sends_per_s']:,.0f} ({m[v][str(c)]['ratio_to_raw']:.2f}×)" for c in cs)
        at = m[v].get("100") or m[v][str(cs[-1])]
        lines.append(f"| {LABELS[v]} | {cells} | {at['p50_ms']:.1f} / {at['p99_ms']:.1f} | "
                     f"{1000 * at['cpu_s_per_1000']:.0f} ({at['cpu_ratio_to_raw']:.2f}× [{rng(at['cpu_ratio_runs'])}])"
                     f" | {max(m[v][str(c)]['peak_rss_mb'] for c in cs):.0f} |")
    if "100" in m["raw"]:
        lines += ["", "What Redis spent per send at c=100 (INFO cpu and INFO commandstats around the timed sends):",
                  "", "| client | Redis CPU µs per send | commands executed per send | of them EVALSHA |",
                  "|---|---|---|---|"]
        for v in ON_REDIS:
            c = m[v]["100"]
            lines.append(f"| {LABELS[v]} | {c['redis_us_per_send']:.1f} [{rng(c['redis_us_runs'], '{:.1f}')}] | "
                         f"{c['redis_commands_per_send']:.2f} | {c['redis_scripts_per_send']:.3f} |")
    by = {(r["queue"], r["variant"]): r for r in results.get("end_to_end", [])}

    def e2e_table(caption: str, cell: Callable[[dict[str, Any]], str]) -> list[str]:
        rows = ["", caption, "", "| queue | plain job | idemsend adapter | adapter + RedisLedger |",
                "|---|---|---|---|"]
        for q in QUEUES:
            cells = ["—" if by.get((q, v)) is None else cell(by[(q, v)]) for v in ("raw", "adapter", "ledger")]
            rows.append(f"| {q} | " + " | ".join(cells) + " |")
        return rows

    if by:
        lines += e2e_table(f"End to end (jobs/s, median of {results['e2e_repeat']} runs; × the plain job doing the"
                           " same keyed POST):", lambda r: f"{r['jobs_per_s']:,.0f} ({r['ratio_to_raw']:.2f}×)")
        lines += e2e_table("Worker CPU µs per job, same runs (the queue worker's process, or the webhook server's;"
                           " × the plain job [range over the runs]):",
                           lambda r: f"{1000 * r['cpu_s_per_1000']:.0f} ({r['cpu_ratio_to_raw']:.2f}×"
                                     f" [{rng(r['cpu_ratio_runs'])}])")
    so = results.get("scale_out")
    if so:
        lines += ["", f"Scale-out: N worker processes (100 sends in flight each, RedisLedger) against one Redis, then"
                  f" a 3-shard Redis Cluster; median of {results['scale_out_repeat']} runs per point. Projected"
                  " ceiling = 1,000,000 µs × shards / (Redis CPU µs per send, all shards): the sends/s at which"
                  " every shard's core is busy all the time (one core per shard, keys spread evenly).", "",
                  "| store | workers | sends/s [range] | Redis CPU µs per send (all shards) | commands per send |"
                  " EVALSHA per send | projected ceiling, sends/s |",
                  "|---|---|---|---|---|---|---|"]
        for row in so:
            store = "1 Redis" if row["setup"] == "redis" else f"Cluster, {row['shards']} shards"
            rate = f"{row['sends_per_s']:,.0f} [{rng(row['sends_per_s_runs'], '{:,.0f}')}]"
            lines.append(f"| {store} | {row['workers']} | {rate}"
                         f" | {row['redis_us_per_send']:.1f} [{rng(row['redis_us_per_send_runs'], '{:.1f}')}] |"
                         f" {row['commands_per_send']:.2f} | {row['scripts_per_send']:.3f} |"
                         f" {row['ceiling_per_shard']:,.0f} |")
        proj = projection(so)
        lines += ["", proj]
    mem = results.get("memory")
    if mem:
        lines += ["", "What a completed send keeps (benchmarks/memory.py; the engine's record: id, status, and the"
                  " 66-byte MockProvider answer):", "", "| ledger | bytes per completed send | how measured |",
                  "|---|---|---|"]
        r = mem["redis"]
        lines.append(f"| RedisLedger | {r['bytes_per_send']:.0f} ({r['keys_per_send']:.0f} keys; MEMORY USAGE of"
                     f" them: {r['memory_usage_per_send']}) | INFO used_memory over {r['sends']:,} sends |")
        lines.append(f"| MemoryLedger | {mem['memory']['bytes_per_send']:.0f} | tracemalloc over"
                     f" {mem['memory']['sends']:,} sends |")
        pg = mem.get("postgres")
        if pg and "bytes_per_send" in pg:
            lines.append(f"| PostgresLedger | {pg['bytes_per_send']:.0f} (as written, before VACUUM:"
                         f" {pg['bytes_per_send_as_written']:.0f}) | pg_total_relation_size of both tables over"
                         f" {pg['sends']:,} sends, after VACUUM FULL |")
        elif pg:
            lines.append(f"| PostgresLedger | not measured | {pg.get('skipped', '')} |")
        sq = mem.get("sqlite")
        if sq:
            lines.append(f"| SQLiteLedger | {sq['bytes_per_send']:.0f} (as written, before VACUUM:"
                         f" {sq['bytes_per_send_as_written']:.0f}; {sq['transactions_per_send']:.3f} commits per"
                         f" send at 500 in flight) | pages in use of the file over {sq['sends']:,} sends, WAL"
                         " checkpointed, after VACUUM |")
    s = results.get("scale")
    if s:
        lines += ["", f"Scale: {s['in_flight_sends']:,} sends in flight in one process (provider saw "
                  f"{s['provider_max_concurrency']:,} at once), all {s['sent']:,} sent; RSS {s['rss_base_mb']:.0f} → "
                  f"{s['rss_peak_mb']:.0f} MB, **{s['kb_per_in_flight_send']:.1f} KB per in-flight send** "
                  "(the engine's state plus aiohttp's connection and socket buffers)."]
    lines += ["", f"Targets (c=100; load average {results['load_start']:.2f}): "
              + "; ".join(t["text"] for t in results["targets"]) + "."]
    lines += ["", "Also: " + "; ".join(results["notes"]) + "."]
    return "\n".join(lines)


def projection(rows: list[dict[str, Any]]) -> str:
    one = [r for r in rows if r["setup"] == "redis"]
    clu = [r for r in rows if r["setup"] == "cluster"]
    if not one or not clu:
        return ""
    worst_one = max(one, key=lambda r: r["redis_us_per_send"])
    worst_clu = max(clu, key=lambda r: r["redis_us_per_send"])
    per_shard = 1e6 / (worst_clu["redis_us_per_send"] / worst_clu["shards"])
    return (f"Projection (from the costliest point of each, so a floor): one Redis shard runs out of core at about"
            f" **{1e6 / worst_one['redis_us_per_send']:,.0f} sends/s** ({worst_one['redis_us_per_send']:.1f} µs"
            f" per send); on Cluster a send costs {worst_clu['redis_us_per_send']:.1f} µs summed over the shards,"
            f" so N shards carry about **N × {per_shard / worst_clu['shards']:,.0f} sends/s** (3 shards:"
            f" {per_shard:,.0f}), keys spread evenly over the slots. On this 2-core machine the workers, the"
            " MockProvider and Redis share two cores, so the measured sends/s flatten long before that.")


def notes(results: dict[str, Any]) -> list[str]:
    m = results["matrix"]
    out = []
    if "100" in m["raw"]:
        ahead = m["redis"]["100"]["sends_per_s"] / m["idemkit"]["100"]["sends_per_s"]
        ours, theirs = m["redis"]["100"]["redis_us_per_send"], m["idemkit"]["100"]["redis_us_per_send"]
        out.append(f"RedisLedger vs idemkit {ahead:.2f}× the throughput, Redis CPU per send {ours:.1f} vs"
                   f" {theirs:.1f} µs")
        e = m["engine"]["100"]
        out.append(f"idemsend without a ledger {e['ratio_to_raw']:.2f}× raw throughput"
                   f" [repeats {rng(e['ratio_runs'])}]")
    rows = results.get("end_to_end", [])
    adapters = [r for r in rows if r["variant"] == "adapter"]
    if adapters:
        w = max(adapters, key=lambda r: 1 - r["ratio_to_raw"])
        plain = next(r["runs"] for r in rows if r["queue"] == w["queue"] and r["variant"] == "raw")
        ratios = [a / b for a, b in zip(w["runs"], plain, strict=True)]
        out.append(f"worst adapter throughput end to end {w['ratio_to_raw']:.2f}× the plain job ({w['queue']},"
                   f" repeats {rng(ratios)})")
        for row in rows:
            if row["variant"] == "ledger":
                out.append(f"{row['queue']} adapter + RedisLedger worker CPU per job {row['cpu_ratio_to_raw']:.2f}×"
                           f" the plain job [repeats {rng(row['cpu_ratio_runs'])}] (it does the ledger's work too)")
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = results["concurrencies"]
    m = results["matrix"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    (tput, ratio), (cpu, scale) = axes
    colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for i, v in enumerate(VARIANTS):
        xs = [c * (1 + 0.04 * (i - 2.5)) for c in cs]  # nudged so the bars do not overlap
        for ax, key, runs_key in ((tput, "sends_per_s", "runs"), (ratio, "ratio_to_raw", "ratio_runs"),
                                  (cpu, "cpu_ratio_to_raw", "cpu_ratio_runs")):
            ys = [m[v][str(c)][key] for c in cs]
            lo = [max(0.0, y - min(m[v][str(c)][runs_key])) for y, c in zip(ys, cs, strict=True)]
            hi = [max(0.0, max(m[v][str(c)][runs_key]) - y) for y, c in zip(ys, cs, strict=True)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=3, lw=1.2, color=colors[v], label=LABELS[v])
    for ax, title in ((tput, "sends/s"), (ratio, "throughput × raw aiohttp (same run)"),
                      (cpu, "client CPU per send × raw aiohttp (same run)")):
        ax.set_xscale("log")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency (sends in flight)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax, y, label, where in (
        (ratio, T_REDIS_THROUGHPUT, f"target at c=100: RedisLedger ≥ {T_REDIS_THROUGHPUT:.2f}× raw", (0.01, 3, "left")),
        (cpu, T_REDIS_CPU, f"target at c=100: RedisLedger ≤ {T_REDIS_CPU:.2f}× raw", (0.01, 3, "left")),
        (cpu, T_ENGINE_CPU, f"target at c=100: no ledger ≤ {T_ENGINE_CPU:.2f}× raw", (0.99, -10, "right")),
    ):
        ax.axhline(y, color="black", ls="--", lw=0.8)
        ax.annotate(label, xy=(where[0], y), xycoords=("axes fraction", "data"), xytext=(0, where[1]),
                    textcoords="offset points", fontsize=8, ha=where[2])
    so = results.get("scale_out") or []
    for setup, label, color in (("redis", "one Redis", "tab:red"), ("cluster", "3-shard Redis Cluster", "tab:purple")):
        rows = [r for r in so if r["setup"] == setup]
        if rows:
            ws = [r["workers"] for r in rows]
            ys = [r["sends_per_s"] for r in rows]
            lo = [max(0.0, y - min(r["sends_per_s_runs"])) for y, r in zip(ys, rows, strict=True)]
            hi = [max(0.0, max(r["sends_per_s_runs"]) - y) for y, r in zip(ys, rows, strict=True)]
            scale.errorbar(ws, ys, yerr=[lo, hi], marker="o", capsize=3, color=color,
                           label=f"RedisLedger workers, {label}")
            for r in rows:
                scale.annotate(f"{r['redis_us_per_send']:.0f} µs", (r["workers"], r["sends_per_s"]),
                               xytext=(4, -12 if setup == "redis" else 6), textcoords="offset points", fontsize=7,
                               color=color)
    scale.set_xscale("log", base=2)
    scale.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    scale.set_ylim(bottom=0)
    scale.set_xlabel("worker processes (100 in flight each); labels: Redis CPU per send")
    scale.set_title("scale-out: sends/s (2 cores shared by workers, provider and Redis)")
    scale.grid(alpha=0.3)
    handles, labels = tput.get_legend_handles_labels()
    h2, l2 = scale.get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"idemsend vs raw aiohttp and peers — {results['date']}, load average {results['load_start']:.2f};"
                 " bars: range over the repeats")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=110)


def summary(path: Path) -> str:
    """Every run in runs.jsonl: its load, and each target met or missed."""
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not runs:
        return "no runs yet"
    names = list(dict.fromkeys(t["target"] for r in runs for t in r["targets"]))
    lines = ["| target | " + " | ".join(f"{r['date'][11:16]} (load {r['load_start']:.2f})" for r in runs)
             + " | met in |", "|---|" + "---|" * (len(runs) + 1)]
    for name in names:
        cells, met, seen = [], 0, 0
        for r in runs:
            t = next((t for t in r["targets"] if t["target"] == name), None)
            if t is None:
                cells.append("—")
                continue
            seen += 1
            met += t["met"]
            fmt = "{:.0f}" if "memory" in name else "{:.1f}" if "µs" in t["text"] else "{:.2f}"
            cells.append(f"{fmt.format(t['value'])} [{rng(t['runs'], fmt)}] {'✓' if t['met'] else '✗'}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {met} of {seen} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer sends and one repeat: a smoke run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", default="1,10,100,1000")
    ap.add_argument("--workers", default="1,2,4,8", help="scale-out: worker processes per point")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-scale-out", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="LOAD",
                    help="first wait until the 1-minute load average is below LOAD (at most --wait-max seconds)")
    ap.add_argument("--wait-max", type=float, default=3 * 3600)
    ap.add_argument("--summary", action="store_true", help="print the targets of every run in runs.jsonl and exit")
    ap.add_argument("--render", action="store_true", help="write bench.md and bench.png again from bench.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.summary:
        print(summary(out / "runs.jsonl"))
        return
    absent = missing(("matplotlib",) if args.render else BENCH_PACKAGES)
    if absent:
        ap.error(f"needs {', '.join(absent)}, from the bench extra: pip install -e '.[bench]'")
    if args.render:
        recorded = json.loads((out / "bench.json").read_text())
        (out / "bench.md").write_text(markdown(recorded) + "\n")
        plot(recorded, out / "bench.png")
        return
    scale = 0.2 if args.quick else 1.0
    repeat = 1 if args.quick else args.repeat
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    if args.wait_quiet:
        wait_quiet(args.wait_quiet, args.wait_max)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "concurrencies": concurrencies,
        "repeat": repeat,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_start": loadavg(),
    }
    provider, url = start_provider()
    redis = RedisServer().start()
    try:
        print(f"load average {results['load_start']:.2f}; provider ceiling …", file=sys.stderr)
        results["provider_ceiling"] = provider_ceiling(url, max(2000, int(10000 * scale)))
        results["matrix"] = matrix(url, redis.url, concurrencies, repeat, scale)
        # end-to-end cells are noisier than the client matrix (whole workers): more repeats
        e2e_repeat = repeat if args.quick else max(repeat, 5)
        results["e2e_repeat"] = e2e_repeat
        results["end_to_end"] = [] if args.skip_e2e else end_to_end(url, redis.url, e2e_repeat, scale)
        if not args.skip_scale_out:
            results["scale_out_repeat"] = repeat
            results["scale_out"] = scale_out(url, [int(w) for w in args.workers.split(",")],
                                             max(300, int(3000 * scale)), repeat)
    finally:
        provider.terminate()
        redis.cleanup()
    if not args.skip_memory:
        print("memory …", file=sys.stderr)
        results["memory"] = memory(scale)
    if not args.skip_scale:
        print("scale …", file=sys.stderr)
        slow, slow_url = start_provider("--processing-delay", "5")
        try:
            results["scale"] = child("e2e.py", "scale", "--sends", str(int(10000 * (0.5 if args.quick else 1))),
                                     "--url", slow_url)
        finally:
            slow.terminate()
    results["load_end"] = loadavg()
    results["targets"] = targets(results)
    results["notes"] = notes(results)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "bench.md").write_text(markdown(results) + "\n")
    plot(results, out / "bench.png")
    if not args.quick:
        with (out / "runs.jsonl").open("a") as f:
            f.write(json.dumps({k: results[k] for k in ("date", "load_start", "load_end", "targets", "notes")}) + "\n")
    print(markdown(results))
    print(f"\nwritten: {out}/bench.json, bench.md, bench.png, runs.jsonl", file=sys.stderr)


if __name__ == "__main__":
    main()
