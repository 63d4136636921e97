"""``idemsend demo --metrics-port N``: the demo's sends as Prometheus metrics.

``OpenTelemetryHook`` (``idemsend.contrib.otel``) records them with the OpenTelemetry SDK,
whose ``PrometheusMetricReader`` hands them to ``prometheus_client``; its HTTP server
answers ``GET /metrics`` from a thread while the demo runs (and for ``--linger`` seconds
after). Every package it needs is optional: ``install_hint()`` names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._hooks import Hook

__all__ = ["INSTALL", "MetricsServer", "MissingMetricsPackages", "serve_metrics"]

#: What ``--metrics-port`` needs on top of idemsend.
INSTALL = "pip install 'idemsend[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus"


class MissingMetricsPackages(ImportError):
    """A package ``--metrics-port`` needs is not installed."""


@dataclass
class MetricsServer:
    """The running exposition: attach ``hook`` to the engines, scrape ``url``."""

    hook: Hook
    url: str
    _server: Any
    _meter_provider: Any

    def close(self) -> None:
        """Stop answering scrapes and shut the meter provider down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._meter_provider.shutdown()


def serve_metrics(host: str, port: int) -> MetricsServer:
    """Start serving ``/metrics`` on ``host:port`` (port 0: a free one) and return the hook
    that feeds it. Raises ``MissingMetricsPackages`` (what is missing, and ``INSTALL``) or
    ``OSError`` (the port cannot be bound)."""
    try:
        from opentelemetry.exporter.prometheus import (  # type: ignore[import-not-found, unused-ignore]
            PrometheusMetricReader,
        )
        from opentelemetry.sdk.metrics import MeterProvider  # type: ignore[import-not-found, unused-ignore]
        from opentelemetry.sdk.resources import Resource  # type: ignore[import-not-found, unused-ignore]
        from opentelemetry.trace import NoOpTracerProvider  # type: ignore[import-not-found, unused-ignore]
        from prometheus_client import REGISTRY, start_http_server  # type: ignore[import-not-found, unused-ignore]

        from ..contrib.otel import OpenTelemetryHook
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "a package"
        raise MissingMetricsPackages(
            f"--metrics-port needs OpenTelemetry's SDK and Prometheus exporter ({missing} is missing): {INSTALL}"
        ) from exc

    # Bind first: a port in use is reported before anything is registered.
    started = start_http_server(port, addr=host, registry=REGISTRY)
    server = started[0] if started else None  # prometheus_client < 0.17 returns nothing
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "idemsend-demo"})
    )
    # Metrics only: the demo has no trace exporter, so no span is made at all.
    hook = OpenTelemetryHook(NoOpTracerProvider(), meter_provider)
    shown = f"[{host}]" if ":" in host else host
    bound = server.server_port if server is not None else port
    return MetricsServer(hook, f"http://{shown}:{bound}/metrics", server, meter_provider)
