"""Every metric vecmigrate exports, in one place: name, kind, unit, labels and meaning.

Instruments are created from these definitions (:mod:`vecmigrate.telemetry.metrics`), the
Grafana dashboard and the docs name metrics by their Prometheus form (:attr:`MetricDef.prometheus`),
and a test checks that the exporter produces exactly that form. Labels are bounded: a migration,
tenant, collection, version, shard index, phase, store kind or route, never a record id or free
text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "histogram", "gauge", "observable_gauge"]

# Bucket bounds for durations in seconds: from a batch (tens of ms) to a large index build (hours).
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
# Request latencies in seconds: the gateway answers in well under a millisecond to a second.
REQUEST_SECONDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)
# Bytes per shard: 1 MB to 64 GB, by powers of four.
BYTES = tuple(float(1 << n) for n in range(20, 37, 2))

UNIT_SUFFIX = {"s": "seconds", "By": "bytes", "ms": "milliseconds"}


@dataclass(frozen=True)
class MetricDef:
    """One exported metric."""

    name: str
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    @property
    def prometheus(self) -> str:
        """The name Prometheus scrapes (a histogram's series add ``_bucket``, ``_sum``,
        ``_count``), as the OpenTelemetry Prometheus exporter forms it."""
        base = self.name.replace(".", "_")
        if self.unit.endswith("/s"):
            base += "_per_second"
        elif self.unit in UNIT_SUFFIX and not base.endswith(UNIT_SUFFIX[self.unit]):
            base += "_" + UNIT_SUFFIX[self.unit]
        return base + "_total" if self.kind == "counter" else base

    def label_names(self) -> tuple[str, ...]:
        """The labels as Prometheus shows them (dots become underscores)."""
        return tuple(label.replace(".", "_") for label in self.labels)


# -- label keys ------------------------------------------------------------------------------------
MIGRATION = "migration"
TENANT = "tenant"
COLLECTION = "collection"
VERSION = "version"
SHARD = "shard"
PHASE = "phase"
STAGE = "stage"
STORE = "store"
OPERATION = "operation"
INDEX_KIND = "index_kind"
MEASURE = "measure"
GATE = "gate"
ISSUE = "issue"
# OpenTelemetry's HTTP semantic conventions for the gateway.
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"

# -- migration progress (workers) ------------------------------------------------------------------
COPY_VECTORS = MetricDef(
    "vecmigrate.copy.vectors",
    "counter",
    "{vector}",
    "Vectors written to the target by shard copies (re-copies after a retry included).",
    (MIGRATION, TENANT, COLLECTION),
)
COPY_RATE = MetricDef(
    "vecmigrate.copy.rate",
    "observable_gauge",
    "{vector}/s",
    "Copy rate of the shard copies this process runs now, vectors per second since each began.",
    (MIGRATION,),
)
SHARD_COPIED = MetricDef(
    "vecmigrate.shard.copied",
    "observable_gauge",
    "{vector}",
    "Vectors copied so far by each shard copy this process runs now (a shard leaves the series "
    "when its copy ends).",
    (MIGRATION, SHARD),
)
SHARDS_COMPLETED = MetricDef(
    "vecmigrate.shards.completed",
    "counter",
    "{shard}",
    "Shards through a stage: copy, index or validate.",
    (MIGRATION, STAGE),
)
SHARD_DURATION = MetricDef(
    "vecmigrate.shard.duration",
    "histogram",
    "s",
    "Seconds one shard's copy, index build or check took.",
    (STAGE,),
    SECONDS,
)
SHARD_READ = MetricDef(
    "vecmigrate.shard.read",
    "histogram",
    "By",
    "Bytes of ids and vectors one shard's task read from its stores.",
    (STAGE,),
    BYTES,
)
SHARD_WRITTEN = MetricDef(
    "vecmigrate.shard.written",
    "histogram",
    "By",
    "Bytes of ids and vectors one shard's task wrote to its store.",
    (STAGE,),
    BYTES,
)
SHARD_PEAK_MEMORY = MetricDef(
    "vecmigrate.shard.memory.peak",
    "histogram",
    "By",
    "Peak resident memory of the worker process while one shard's task ran, over its memory "
    "when the task began (tasks running beside it count too).",
    (STAGE,),
    BYTES,
)
INDEX_BUILD_DURATION = MetricDef(
    "vecmigrate.index.build.duration",
    "histogram",
    "s",
    "Seconds to build (or find and verify) one shard's index artifact.",
    (INDEX_KIND,),
    SECONDS,
)
CHANGELOG_LAG = MetricDef(
    "vecmigrate.changelog.lag",
    "gauge",
    "{entry}",
    "Change-log entries written to the collection that the target has not applied yet.",
    (MIGRATION,),
)
CATCHUP_APPLIED = MetricDef(
    "vecmigrate.catchup.applied",
    "counter",
    "{entry}",
    "Change-log entries the catch-up applied to the target.",
    (MIGRATION,),
)
MIGRATION_PHASE = MetricDef(
    "vecmigrate.migration.phase",
    "gauge",
    "1",
    "1 for the phase a migration is in, 0 for the phases it left.",
    (MIGRATION, PHASE),
)

# -- gates and data quality ------------------------------------------------------------------------
GATE_RECALL = MetricDef(
    "vecmigrate.gate.recall",
    "gauge",
    "1",
    "recall@k of a version's index against exact search, at the last validation.",
    (MIGRATION, VERSION),
)
GATE_OVERLAP = MetricDef(
    "vecmigrate.gate.overlap",
    "gauge",
    "1",
    "overlap@k of the target's results with the source's: at validation, and from shadow reads.",
    (MIGRATION, VERSION, STAGE),
)
GATE_DISTANCE = MetricDef(
    "vecmigrate.gate.distribution_distance",
    "gauge",
    "1",
    "Distance between the source and target vector distributions (measure: norm_ks, "
    "mean_shift, spectrum_shift).",
    (MIGRATION, VERSION, MEASURE),
)
GATE_LATENCY_RATIO = MetricDef(
    "vecmigrate.gate.latency_ratio",
    "gauge",
    "1",
    "p99 search latency of the target over the source's: at validation and from shadow reads.",
    (MIGRATION, VERSION, STAGE),
)
GATE_PASSED = MetricDef(
    "vecmigrate.gate.passed",
    "gauge",
    "1",
    "1 when the gate passed at its last run, 0 when it failed.",
    (MIGRATION, GATE),
)
DATA_QUALITY = MetricDef(
    "vecmigrate.data_quality.records",
    "gauge",
    "{record}",
    "Records with a data-quality issue at the last validation (issue: nonfinite, zero_norm, "
    "norm_outlier, duplicate, quarantined).",
    (MIGRATION, VERSION, ISSUE),
)

# -- stores ----------------------------------------------------------------------------------------
STORE_DURATION = MetricDef(
    "vecmigrate.store.operation.duration",
    "histogram",
    "s",
    "Seconds per store call (a batch read or write, a search, a count).",
    (STORE, OPERATION),
    (*REQUEST_SECONDS, 5, 10, 30, 60, 300),
)
STORE_RECORDS = MetricDef(
    "vecmigrate.store.records",
    "counter",
    "{record}",
    "Records read, written or deleted through store calls.",
    (STORE, OPERATION),
)
STORE_READ = MetricDef(
    "vecmigrate.store.read",
    "counter",
    "By",
    "Bytes of ids and vectors read from stores.",
    (STORE,),
)
STORE_WRITTEN = MetricDef(
    "vecmigrate.store.written",
    "counter",
    "By",
    "Bytes of ids and vectors written to stores.",
    (STORE,),
)

# -- gateway and routing ---------------------------------------------------------------------------
GATEWAY_DURATION = MetricDef(
    "http.server.request.duration",
    "histogram",
    "s",
    "Gateway request latency by route, status, tenant and the version that served it.",
    (HTTP_METHOD, HTTP_ROUTE, HTTP_STATUS, TENANT, VERSION),
    REQUEST_SECONDS,
)
GATEWAY_ERRORS = MetricDef(
    "vecmigrate.gateway.errors",
    "counter",
    "{error}",
    "Gateway requests answered with an error, by route, tenant, version and error type.",
    (HTTP_ROUTE, TENANT, VERSION, ERROR_TYPE),
)
ROUTING_READ_VERSION = MetricDef(
    "vecmigrate.routing.read_version",
    "gauge",
    "1",
    "1 for the version a collection reads from, 0 for versions it read from before.",
    (TENANT, COLLECTION, VERSION),
)
ROUTING_RAMP = MetricDef(
    "vecmigrate.routing.ramp",
    "gauge",
    "1",
    "Share of a collection's reads the candidate version serves (0 to 1).",
    (TENANT, COLLECTION),
)
ROUTING_SHADOW = MetricDef(
    "vecmigrate.routing.shadow",
    "gauge",
    "1",
    "Share of a collection's reads mirrored to the candidate version for comparison (0 to 1).",
    (TENANT, COLLECTION),
)

ALL: tuple[MetricDef, ...] = (
    COPY_VECTORS,
    COPY_RATE,
    SHARD_COPIED,
    SHARDS_COMPLETED,
    SHARD_DURATION,
    SHARD_READ,
    SHARD_WRITTEN,
    SHARD_PEAK_MEMORY,
    INDEX_BUILD_DURATION,
    CHANGELOG_LAG,
    CATCHUP_APPLIED,
    MIGRATION_PHASE,
    GATE_RECALL,
    GATE_OVERLAP,
    GATE_DISTANCE,
    GATE_LATENCY_RATIO,
    GATE_PASSED,
    DATA_QUALITY,
    STORE_DURATION,
    STORE_RECORDS,
    STORE_READ,
    STORE_WRITTEN,
    GATEWAY_DURATION,
    GATEWAY_ERRORS,
    ROUTING_READ_VERSION,
    ROUTING_RAMP,
    ROUTING_SHADOW,
)

# The Temporal SDK's own metrics carry this prefix (its Runtime's default).
TEMPORAL_PREFIX = "temporal_"

# -- span names and attributes ---------------------------------------------------------------------
SPAN_STORE = "store.{operation}"
ATTR_MIGRATION = "vecmigrate.migration.id"
ATTR_TENANT = "vecmigrate.tenant"
ATTR_COLLECTION = "vecmigrate.collection"
ATTR_VERSION = "vecmigrate.version"
ATTR_SHARD = "vecmigrate.shard"
ATTR_PHASE = "vecmigrate.phase"
ATTR_STORE = "vecmigrate.store.kind"
ATTR_RECORDS = "vecmigrate.records"
ATTR_BYTES = "vecmigrate.bytes"
ATTR_READ_VERSION = "vecmigrate.routing.read_version"
ATTR_CANDIDATE = "vecmigrate.routing.candidate_version"
ATTR_RAMP = "vecmigrate.routing.ramp_percent"
ATTR_SHADOW = "vecmigrate.routing.shadow_percent"
ATTR_CANARY = "vecmigrate.routing.canary"
ATTR_SHADOWED = "vecmigrate.routing.shadowed"
ATTR_GENERATION = "vecmigrate.routing.generation"
