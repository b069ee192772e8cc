"""OpenTelemetry set up from the standard ``OTEL_*`` variables.

Traces: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; comma-separated), over
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``grpc``, the default, or ``http/protobuf``) to
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``. With none of these set nothing is traced (an endpoint
alone means ``otlp``). Sampling (``OTEL_TRACES_SAMPLER``), batching (``OTEL_BSP_*``), headers,
timeouts and the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) are read by the
OpenTelemetry SDK itself.

Metrics: ``OTEL_METRICS_EXPORTER`` (``prometheus``, ``otlp``, ``console``, ``none``). Workers and
the gateway default to ``prometheus`` (a scrape endpoint costs nothing until scraped), commands to
``none``. ``OTEL_SDK_DISABLED=true`` turns everything off.

Exemplars (``OTEL_METRICS_EXEMPLAR_FILTER``, the SDK's default ``trace_based``) are taken only
when a reader can send them on: with Prometheus alone (its exporter drops them) the filter is
``always_off`` unless the variable says otherwise, which saves each measurement made inside a
sampled span the exemplar the SDK would build and throw away (about 5 us a gateway request).
With Prometheus alone, the gateway's request histogram is kept for it directly, not by the SDK
(:data:`vecmigrate.telemetry.metrics.DIRECT`): the same ``/metrics`` output at a twentieth of
the cost per request.

One :class:`Telemetry` is current per process (:func:`install`); instruments, the store proxy and
the Temporal interceptors take their tracer and meter from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracerProvider, Tracer
from prometheus_client import CollectorRegistry

from vecmigrate.errors import ConfigurationError
from vecmigrate.telemetry.metrics import Metrics

SCOPE = "vecmigrate"
_EXPORTERS = ("otlp", "console", "none")
_METRIC_EXPORTERS = ("prometheus", "otlp", "console", "none")
_PROTOCOLS = ("grpc", "http/protobuf")


def version() -> str:
    """vecmigrate's installed version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("vecmigrate")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Telemetry:
    """The tracer and meter providers of a process, and the instruments made from them."""

    service: str = "vecmigrate"
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    # Where the Prometheus exporter keeps its metrics, for a /metrics endpoint to serve.
    registry: CollectorRegistry | None = None
    # Prometheus is the only metric reader: the histograms of metrics.DIRECT go to the
    # registry directly rather than through the SDK (which would send them nowhere else).
    prometheus_only: bool = False
    tracer: Tracer = field(init=False)
    meter: Meter = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        tp = self.tracer_provider or NoOpTracerProvider()
        mp = self.meter_provider or NoOpMeterProvider()
        self.tracer = tp.get_tracer(SCOPE, version())
        self.meter = mp.get_meter(SCOPE, version())
        direct = self.prometheus_only and self.meter_provider is not None
        self.metrics = Metrics(self.meter, self.registry if direct else None)

    @property
    def tracing(self) -> bool:
        """Whether spans are recorded and exported."""
        return self.tracer_provider is not None

    @property
    def metering(self) -> bool:
        """Whether metric points are recorded."""
        return self.meter_provider is not None

    def flush(self) -> None:
        """Export what is buffered now."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()
        if self.meter_provider is not None:
            self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Flush and stop the exporters (the Prometheus registry is emptied)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        self.metrics.close()


def _choices(
    environ: Mapping[str, str], name: str, allowed: Sequence[str], default: str
) -> list[str]:
    raw = environ.get(name, "").strip() or default
    chosen = [c.strip().lower() for c in raw.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise ConfigurationError(
            f"{name}={raw!r}: vecmigrate exports to {', '.join(allowed)}, not {', '.join(unknown)}"
        )
    return [c for c in chosen if c != "none"]


def _protocol(environ: Mapping[str, str], signal: str) -> str:
    name = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    raw = environ.get(name) or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if raw not in _PROTOCOLS:
        raise ConfigurationError(
            f"{name} or OTEL_EXPORTER_OTLP_PROTOCOL is {raw!r}; use grpc or http/protobuf"
        )
    return raw


def _span_exporter(kind: str, environ: Mapping[str, str]) -> SpanExporter:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if _protocol(environ, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def _metric_reader(kind: str, environ: Mapping[str, str]) -> MetricReader:
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if _protocol(environ, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(OTLPMetricExporter())
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return PeriodicExportingMetricReader(HttpMetricExporter())


def configure(
    service: str,
    *,
    metrics_default: str = "none",
    environ: Mapping[str, str] | None = None,
    span_processors: Sequence[SpanProcessor] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Telemetry:
    """A :class:`Telemetry` for ``service`` as the ``OTEL_*`` variables say.

    ``span_processors`` and ``metric_readers`` are added to what the variables ask for (tests
    pass an in-memory exporter this way).

    Raises:
        ConfigurationError: an exporter or protocol vecmigrate does not know.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry(service)
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    span_kinds = _choices(env, "OTEL_TRACES_EXPORTER", _EXPORTERS, "otlp" if endpoint else "none")
    metric_kinds = _choices(env, "OTEL_METRICS_EXPORTER", _METRIC_EXPORTERS, metrics_default)
    # OTEL_SERVICE_NAME names the process where it is set (a region's worker, say): the code's
    # own name is the default, as the specification has the variable win.
    name = env.get("OTEL_SERVICE_NAME") or service
    resource = Resource.create({"service.name": name, "service.version": version()})
    tracer_provider = None
    processors: list[SpanProcessor] = [
        BatchSpanProcessor(_span_exporter(k, env)) for k in span_kinds
    ]
    processors += list(span_processors)
    if processors:
        tracer_provider = TracerProvider(resource=resource)
        for processor in processors:
            tracer_provider.add_span_processor(processor)
    registry = None
    readers = list(metric_readers)
    if "prometheus" in metric_kinds:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry, scope_info_enabled=False))
    readers += [_metric_reader(k, env) for k in metric_kinds if k != "prometheus"]
    meter_provider = None
    if readers:
        exemplars = None
        if (
            not env.get("OTEL_METRICS_EXEMPLAR_FILTER")
            and registry is not None
            and len(readers) == 1
        ):
            exemplars = AlwaysOffExemplarFilter()  # Prometheus alone: no exemplar goes anywhere
        meter_provider = MeterProvider(
            metric_readers=readers, resource=resource, exemplar_filter=exemplars
        )
    alone = registry is not None and len(readers) == 1
    return Telemetry(service, tracer_provider, meter_provider, registry, prometheus_only=alone)


_current = Telemetry()
_global_set = False


def current() -> Telemetry:
    """The telemetry of this process (nothing recorded until one is installed)."""
    return _current


def install(telemetry: Telemetry, *, set_global: bool = False) -> Telemetry:
    """Make ``telemetry`` current; with ``set_global``, OpenTelemetry's global providers too
    (once per process: a process entry point does it, so libraries' own spans join ours)."""
    global _current, _global_set
    _current = telemetry
    if set_global and not _global_set:
        if telemetry.tracer_provider is not None:
            trace.set_tracer_provider(telemetry.tracer_provider)
        if telemetry.meter_provider is not None:
            otel_metrics.set_meter_provider(telemetry.meter_provider)
        _global_set = True
    return telemetry


def uninstall() -> None:
    """Shut the current telemetry down and record nothing from now on."""
    global _current
    _current.shutdown()
    _current = Telemetry()
