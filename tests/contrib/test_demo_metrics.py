"""``idemsend demo --metrics-port``: the demo run as a real process, its /metrics scraped over
real HTTP while it runs and after (``--linger``), the counts checked against the demo's own
report."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "opentelemetry.exporter.prometheus", reason="the Prometheus exporter is not installed (run `nox -s otel`)"
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


class Demo:
    """``idemsend demo`` in a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "idemsend.cli", "demo", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s: {self.seen}") from None
            if line is None:
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the demo ended before {pattern!r}: {self.seen}\n{stderr}")
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def report(self) -> dict[str, str]:
        return {
            line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in self.seen if line.startswith("| ") and "what" not in line
        }

    def stop(self) -> int:
        """Ctrl-C (ends the linger); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    made: list[Demo] = []
    yield made
    for demo in made:
        demo.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> tuple[str, dict[str, float]]:
    """The exposition's text and each sample name's total over its label sets."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if found and not line.startswith("#"):
            totals[found[1]] = totals.get(found[1], 0.0) + float(found[3])
    return text, totals


@pytest.mark.processes
@pytest.mark.parametrize("port", ["free", "0"])
def test_the_demo_serves_its_sends_as_prometheus_metrics(demos: list[Demo], port: str) -> None:
    asked = free_port() if port == "free" else 0
    demo = Demo("--jobs", "40", "--seed", "11", "--quiet", "--fault-rate", "0.3",
                "--metrics-port", str(asked), "--linger", "120")
    demos.append(demo)
    url = demo.wait_for(r"^serving Prometheus metrics at (http://127\.0\.0\.1:(\d+)/metrics)$", timeout=60)
    if asked:
        assert int(url[2]) == asked
    else:
        assert int(url[2]) > 0
    scrape(url[1])  # answered while the demo runs (whatever it has counted so far)
    demo.wait_for(r"^(OK|FAILED): ")
    demo.wait_for(r"^serving the final metrics at .* for 120 s more \(Ctrl-C to stop\)$", timeout=10)
    report = demo.report()
    text, totals = scrape(url[1])

    deliveries, requests = int(report["deliveries"]), int(report["provider requests"])
    assert deliveries >= 40 and requests >= 40
    # one idemsend.sends point per send (each delivery is one Engine.send) and one
    # idemsend.provider.requests per request the provider saw: the counts are exact
    assert totals["idemsend_sends_total"] == deliveries
    assert totals["idemsend_send_duration_seconds_count"] == deliveries
    assert totals["idemsend_provider_requests_total"] == requests
    assert totals["idemsend_ledger_operation_duration_seconds_count"] >= deliveries  # every send claims
    assert totals["idemsend_send_active"] == 0
    # faults at 30% over 40+ requests: some retried (the seed makes it so)
    assert totals.get("idemsend_provider_retries_total", 0) > 0 and totals.get("idemsend_send_waits_total", 0) > 0
    assert re.search(r'^idemsend_sends_total\{[^}]*idemsend_outcome="sent"[^}]*\} [1-9]', text, re.M)
    assert 'service_name="idemsend-demo"' in text
    # low-cardinality labels only: no key, job id or address
    assert "welcome:" not in text and "job-0" not in text and "@example.com" not in text

    assert demo.stop() == (0 if report_ok(demo) else 1)


def report_ok(demo: Demo) -> bool:
    return any(line.startswith("OK: ") for line in demo.seen)


@pytest.mark.processes
def test_a_metrics_port_in_use_is_one_line(demos: list[Demo]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "idemsend.cli", "demo", "--jobs", "5", "--quiet", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
    assert out.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
