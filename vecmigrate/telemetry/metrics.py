"""The instruments of :mod:`vecmigrate.telemetry.names`, and what each fact records.

Call sites say what happened (a shard copied so far, a gate report, a request served); this
module turns it into metric points with bounded labels. Every instrument comes from one meter:
the no-op meter when metrics are off, where each call costs a method call.

The histograms of :data:`DIRECT` (the gateway's request duration: one point per request) are
kept by :class:`PrometheusHistogram` instead when Prometheus is the only reader: the
OpenTelemetry SDK cleans, copies and hashes the label set of every measurement (about 19 us a
point; it has no bound instruments), where a pre-bound series here is a bisect and a lock
(about 1 us). Its ``/metrics`` output is the OpenTelemetry exporter's, sample for sample.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from vecmigrate.model.gates import GateReport, ShadowFigures
from vecmigrate.model.routing import RoutingView
from vecmigrate.telemetry import names
from vecmigrate.telemetry.names import MetricDef

Labels = Mapping[str, str | int | float | bool]
# Records one value into a series whose labels were given once.
Recorder = Callable[[float], None]
# Histograms recorded once per gateway request: kept by PrometheusHistogram when Prometheus
# is the only metric reader.
DIRECT = frozenset({names.GATEWAY_DURATION.name})


@dataclass
class _Copy:
    migration: str
    shard: int
    began: float
    base: int
    copied: int


class CopyTracker:
    """The shard copies this process runs now: the source of the live copy gauges, and of the
    copy counter's increments (a copy reports its running count; the counter gets the rise)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, _Copy] = {}
        self._next = 0

    def begin(self, migration: str, shard: int, already: int = 0) -> int:
        """Start tracking a copy that resumes with ``already`` vectors copied; returns its key."""
        with self._lock:
            self._next += 1
            self._active[self._next] = _Copy(migration, shard, time.monotonic(), already, already)
            return self._next

    def progress(self, key: int, copied: int) -> int:
        """Note a copy's running count; returns how much it rose since the last note."""
        with self._lock:
            copy = self._active.get(key)
            if copy is None or copied <= copy.copied:
                return 0
            rise, copy.copied = copied - copy.copied, copied
            return rise

    def end(self, key: int) -> None:
        """Stop tracking a copy (finished, paused or failed)."""
        with self._lock:
            self._active.pop(key, None)

    def per_shard(self) -> list[tuple[str, int, int]]:
        """(migration, shard, copied) of each copy in flight."""
        with self._lock:
            return [(c.migration, c.shard, c.copied) for c in self._active.values()]

    def rates(self) -> dict[str, float]:
        """Vectors per second per migration, summed over its copies in flight."""
        now = time.monotonic()
        out: dict[str, float] = {}
        with self._lock:
            for c in self._active.values():
                elapsed = now - c.began
                if elapsed > 0:
                    out[c.migration] = out.get(c.migration, 0.0) + (c.copied - c.base) / elapsed
        return out


def _label_value(value: Any) -> str:
    """A label value as the OpenTelemetry Prometheus exporter writes it (JSON for non-strings:
    200 is "200", True is "true")."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


class _Series:
    """One label set's buckets, sum and count."""

    __slots__ = ("bounds", "counts", "lock", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        at = bisect.bisect_left(self.bounds, value)  # the first bucket whose bound >= value
        with self.lock:
            self.counts[at] += 1
            self.sum += value


class PrometheusHistogram(Collector):
    """A histogram for Prometheus alone, registered in ``registry``: what the OpenTelemetry
    exporter would expose for ``metric`` (name, help, unit, ``le`` bounds as written in
    :mod:`~vecmigrate.telemetry.names`, cumulative counts, and the label keys of all series
    on each, missing ones empty), at a fraction of the SDK's cost per point."""

    def __init__(self, metric: MetricDef, registry: CollectorRegistry) -> None:
        if metric.kind != "histogram" or not metric.buckets:
            raise ValueError(f"{metric.name} is not a histogram with buckets")
        self.metric = metric
        self._bounds = tuple(float(b) for b in metric.buckets)
        self._lock = threading.Lock()
        self._series: dict[tuple[tuple[str, str], ...], _Series] = {}
        self._registry = registry
        registry.register(self)

    def bind(self, labels: Labels) -> Recorder:
        """The recorder of one label set: keep it and call it per value."""
        key = tuple(sorted((k, _label_value(v)) for k, v in labels.items()))
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(self._bounds)
        return series.observe

    def record(self, value: float, labels: Labels) -> None:
        self.bind(labels)(value)

    def unregister(self) -> None:
        self._registry.unregister(self)

    def _family(self, keys: list[str]) -> HistogramMetricFamily:
        d = self.metric
        unit = names.UNIT_SUFFIX.get(d.unit, "")
        return HistogramMetricFamily(d.prometheus, d.description, labels=keys, unit=unit)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self._family([])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            series = list(self._series.items())
        if not series:
            return  # as the exporter: no family before the first point
        keys = sorted({k for key, _ in series for k, _ in key})
        family = self._family(keys)
        bounds = [str(b) for b in self.metric.buckets or ()] + ["+Inf"]
        for key, s in series:
            with s.lock:
                counts, total = list(s.counts), s.sum
            given = dict(key)
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric([given.get(k, "") for k in keys], cumulative, total)
        yield family


class _Bound:
    """An OpenTelemetry instrument's recorder for one label set (the SDK has no bound
    instruments: this only saves the call site from keeping the labels)."""

    __slots__ = ("labels", "record")

    def __init__(self, instrument: Any, labels: Labels) -> None:
        self.record = instrument.record
        self.labels = labels

    def __call__(self, value: float) -> None:
        self.record(value, self.labels)


class Metrics:
    """Every instrument, created from one meter (and the histograms of :data:`DIRECT` kept for
    Prometheus directly when ``registry`` is given: Prometheus is the only reader)."""

    def __init__(self, meter: Meter, registry: CollectorRegistry | None = None) -> None:
        self.copies = CopyTracker()
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}
        self._read_versions: dict[tuple[str, str], str] = {}
        self._instruments: dict[str, Any] = {}
        self._direct: dict[str, PrometheusHistogram] = {}
        observers = {
            names.COPY_RATE.name: self._observe_rates,
            names.SHARD_COPIED.name: self._observe_shards,
        }
        for d in names.ALL:
            common: dict[str, Any] = {"unit": d.unit, "description": d.description}
            if registry is not None and d.name in DIRECT:
                made: Any = PrometheusHistogram(d, registry)
                self._direct[d.name] = made
            elif d.kind == "counter":
                made = meter.create_counter(d.name, **common)
            elif d.kind == "histogram":
                made = meter.create_histogram(
                    d.name, explicit_bucket_boundaries_advisory=list(d.buckets or ()), **common
                )
            elif d.kind == "gauge":
                made = meter.create_gauge(d.name, **common)
            else:
                made = meter.create_observable_gauge(
                    d.name, callbacks=[observers[d.name]], **common
                )
            self._instruments[d.name] = made

    # -- the generic three ---------------------------------------------------------------------

    def add(self, metric: MetricDef, value: float, labels: Labels) -> None:
        """Add to a counter."""
        self._instruments[metric.name].add(value, labels)

    def record(self, metric: MetricDef, value: float, labels: Labels) -> None:
        """Record one value of a histogram."""
        self._instruments[metric.name].record(value, labels)

    def set(self, metric: MetricDef, value: float, labels: Labels) -> None:
        """Set a gauge."""
        self._instruments[metric.name].set(value, labels)

    def recorder(self, metric: MetricDef, labels: Labels) -> Recorder:
        """Records values of histogram ``metric`` with ``labels``: made once per label set
        and kept by a caller that records many (``labels`` must not change afterwards)."""
        direct = self._direct.get(metric.name)
        if direct is not None:
            return direct.bind(labels)
        return _Bound(self._instruments[metric.name], labels)

    def close(self) -> None:
        """Take the histograms kept for Prometheus directly out of its registry."""
        for histogram in self._direct.values():
            histogram.unregister()
        self._direct.clear()

    # -- what happened -------------------------------------------------------------------------

    def copy_progress(self, key: int, copied: int, labels: Labels) -> None:
        """A tracked copy (see :attr:`copies`) reached ``copied`` vectors."""
        rise = self.copies.progress(key, copied)
        if rise:
            self.add(names.COPY_VECTORS, rise, labels)

    def shard_done(
        self,
        migration: str,
        stage: str,
        seconds: float,
        *,
        read_bytes: int = 0,
        written_bytes: int = 0,
        peak_memory: int | None = None,
    ) -> None:
        """One shard went through ``stage`` (copy, index, validate)."""
        self.add(names.SHARDS_COMPLETED, 1, {names.MIGRATION: migration, names.STAGE: stage})
        by_stage = {names.STAGE: stage}
        self.record(names.SHARD_DURATION, seconds, by_stage)
        self.record(names.SHARD_READ, read_bytes, by_stage)
        self.record(names.SHARD_WRITTEN, written_bytes, by_stage)
        if peak_memory is not None:
            self.record(names.SHARD_PEAK_MEMORY, peak_memory, by_stage)

    def phase(self, migration: str, phase: str) -> None:
        """A migration entered ``phase``: its gauge goes to 1 and the one it left to 0."""
        with self._lock:
            left = self._phases.get(migration)
            self._phases[migration] = phase
        if left is not None and left != phase:
            self.set(names.MIGRATION_PHASE, 0, {names.MIGRATION: migration, names.PHASE: left})
        self.set(names.MIGRATION_PHASE, 1, {names.MIGRATION: migration, names.PHASE: phase})

    def catch_up(self, migration: str, applied: int, lag: int) -> None:
        """A catch-up pass applied ``applied`` change-log entries and left ``lag`` behind."""
        labels = {names.MIGRATION: migration}
        self.add(names.CATCHUP_APPLIED, applied, labels)
        self.set(names.CHANGELOG_LAG, lag, labels)

    def gate_report(self, migration: str, source: str, target: str, report: GateReport) -> None:
        """The figures and verdicts of one validation, as gauges per version."""
        for verdict in report.verdicts:
            self.set(
                names.GATE_PASSED,
                int(verdict.passed),
                {names.MIGRATION: migration, names.GATE: verdict.name},
            )
        for version, recall in ((source, report.source_recall), (target, report.target_recall)):
            if recall is not None:
                self.set(
                    names.GATE_RECALL, recall, {names.MIGRATION: migration, names.VERSION: version}
                )
        at_target = {names.MIGRATION: migration, names.VERSION: target}
        figures = report.figures
        if figures is not None:
            if figures.overlap is not None:
                self.set(
                    names.GATE_OVERLAP, figures.overlap, {**at_target, names.STAGE: "validate"}
                )
            ratio = _ratio(figures.p99_ms_new, figures.p99_ms_old)
            if ratio is not None:
                self.set(names.GATE_LATENCY_RATIO, ratio, {**at_target, names.STAGE: "validate"})
            for measure in ("norm_ks", "mean_shift", "spectrum_shift"):
                value = getattr(figures, measure)
                if value is not None:
                    self.set(names.GATE_DISTANCE, value, {**at_target, names.MEASURE: measure})
        if report.shards:
            for version, side in ((source, "source"), (target, "target")):
                profiles = [getattr(c, side) for c in report.shards]
                issues = {
                    "nonfinite": sum(p.nonfinite for p in profiles),
                    "zero_norm": sum(p.zero for p in profiles),
                    "norm_outlier": sum(p.off_unit_norm for p in profiles),
                    "duplicate": sum(p.duplicate_ids for p in profiles),
                    # Records left out by reason (see the quarantine), all reasons together.
                    "quarantined": sum(sum(p.quarantined.values()) for p in profiles),
                }
                for issue, count in issues.items():
                    self.set(
                        names.DATA_QUALITY,
                        count,
                        {names.MIGRATION: migration, names.VERSION: version, names.ISSUE: issue},
                    )

    def shadow(self, migration: str, target: str, figures: ShadowFigures) -> None:
        """What shadow reads measured during one shadow or ramp gate."""
        at_target = {names.MIGRATION: migration, names.VERSION: target, names.STAGE: "shadow"}
        if figures.overlap is not None:
            self.set(names.GATE_OVERLAP, figures.overlap, at_target)
        ratio = _ratio(figures.p99_ms_new, figures.p99_ms_old)
        if ratio is not None:
            self.set(names.GATE_LATENCY_RATIO, ratio, at_target)

    def routing(self, tenant: str, collection: str, view: RoutingView) -> None:
        """The routing row a gateway serves ``tenant/collection`` by."""
        key = (tenant, collection)
        where = {names.TENANT: tenant, names.COLLECTION: collection}
        with self._lock:
            left = self._read_versions.get(key)
            if view.read_version is not None:
                self._read_versions[key] = view.read_version
        if left is not None and left != view.read_version:
            self.set(names.ROUTING_READ_VERSION, 0, {**where, names.VERSION: left})
        if view.read_version is not None:
            self.set(names.ROUTING_READ_VERSION, 1, {**where, names.VERSION: view.read_version})
        candidate = view.candidate_version is not None
        self.set(names.ROUTING_RAMP, view.ramp_percent / 100 if candidate else 0.0, where)
        self.set(names.ROUTING_SHADOW, view.shadow_percent / 100 if candidate else 0.0, where)

    # -- observable gauges ---------------------------------------------------------------------

    def _observe_rates(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(rate, {names.MIGRATION: migration})
            for migration, rate in self.copies.rates().items()
        ]

    def _observe_shards(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(copied, {names.MIGRATION: migration, names.SHARD: str(shard)})
            for migration, shard, copied in self.copies.per_shard()
        ]


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old <= 0:
        return None
    return new / old
