"""The OpenTelemetry SDK wired to in-memory exporters, one set per test (never the global
providers, which can be set only once per process). Imported by the test modules after
their ``importorskip``, so it may import the SDK at the top."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from idemsend.contrib.otel import OpenTelemetryHook


@dataclass
class Telemetry:
    """What a test's sends reported: finished spans and collected metric points."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def hook(self, **options: Any) -> OpenTelemetryHook:
        return OpenTelemetryHook(self.tracer_provider, self.meter_provider, **options)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def sends(self) -> list[ReadableSpan]:
        return self.spans("idemsend.send")

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Every metric's points as (attributes, value): a number for sums, the point for histograms."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = out.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        value = getattr(point, "value", point)
                        points.append((dict(point.attributes or {}), value))
        return out

    def units(self) -> dict[str, str]:
        data = self.reader.get_metrics_data()
        return {
            m.name: m.unit or ""
            for rm in (data.resource_metrics if data is not None else ())
            for sm in rm.scope_metrics
            for m in sm.metrics
        }

    def value(self, name: str, **attrs: Any) -> Any:
        """The sum of ``name``'s points whose attributes include ``attrs`` (dots as ``__``),
        counting a histogram point as its count."""
        want = {k.replace("__", "."): v for k, v in attrs.items()}
        total: float = 0
        for point_attrs, value in self.metrics().get(name, []):
            if all(point_attrs.get(k) == v for k, v in want.items()):
                total += value if isinstance(value, int | float) else value.count
        return total


def make_telemetry() -> Telemetry:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    return Telemetry(tracer_provider, meter_provider, exporter, reader)
