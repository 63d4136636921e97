"""``idemsend demo --metrics-port`` without the packages it needs: one line, exit 2, before
anything runs. (With them installed, tests/contrib/test_demo_metrics.py scrapes it.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

INSTALL = "pip install 'idemsend[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "idemsend.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(
    all(_importable(m) for m in ("opentelemetry.sdk", "opentelemetry.exporter.prometheus", "prometheus_client")),
    reason="OpenTelemetry's SDK and Prometheus exporter are installed here: --metrics-port works",
)
def test_metrics_port_without_opentelemetry_is_one_line_and_exit_2() -> None:
    out = _cli("demo", "--jobs", "5", "--quiet", "--metrics-port", "9464")
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idemsend: --metrics-port needs"), out.stderr
    assert INSTALL in lines[0] and "Traceback" not in out.stderr
    assert out.stdout == ""  # it failed before the demo ran: no table, no URL


def test_linger_needs_metrics_port() -> None:
    out = _cli("demo", "--jobs", "5", "--quiet", "--linger", "5")
    assert out.returncode == 2 and "--linger" in out.stderr and "needs --metrics-port" in out.stderr
    assert out.stdout == ""


def test_the_demo_help_documents_the_metrics_options() -> None:
    out = _cli("demo", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for needle in ("--metrics-port N", "--metrics-host HOST", "--linger SECONDS", "/metrics", INSTALL):
        assert needle in text, needle
