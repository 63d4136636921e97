"""Integrations with third-party tools, each in its own module behind its own extra,
imported by path (nothing here is imported by ``import idemsend``):

* ``idemsend.contrib.otel`` (``pip install 'idemsend[otel]'``): ``OpenTelemetryHook``,
  OpenTelemetry traces and metrics for every ``Engine.send`` (docs/observability.md).
"""

__all__: list[str] = []
