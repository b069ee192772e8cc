"""What a worker reports about its work: Temporal's own metrics, log lines, spans' context and
migration metrics, observed around each activity.

Activities stay thin adapters: this interceptor watches them from outside. Around each one it
sets the current work (migration, shard, task; read by log lines and the store proxy), samples
the process's memory, follows a copy's heartbeats for the live copy metrics, and turns results
into metrics and one INFO line per phase change and per finished shard.

The Temporal SDK's metrics (task latencies, slots, polls) reach the same meter provider through
a :class:`~temporalio.runtime.MetricBuffer` drained by the SDK's
:class:`~temporalio.contrib.opentelemetry.MetricsExporter`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.contrib.opentelemetry import MetricsExporter, TracingInterceptor
from temporalio.runtime import MetricBuffer, MetricBufferDurationFormat, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from vecmigrate.model.gates import GateReport
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import (
    ArtifactRef,
    CatchUpResult,
    CopyShardResult,
    ShadowResult,
    SpecTask,
)
from vecmigrate.telemetry import names
from vecmigrate.telemetry.context import Work, working
from vecmigrate.telemetry.resources import PeakMemory
from vecmigrate.telemetry.setup import Telemetry, current

log = logging.getLogger("vecmigrate.worker")

# Activities that work on one shard, and the stage each is of.
SHARD_STAGES = {"copy_shard": "copy", "build_shard_index": "index", "validate_shard": "validate"}

_runtimes: dict[int, tuple[Runtime, MetricBuffer]] = {}


def temporal_runtime(telemetry: Telemetry | None = None) -> Runtime | None:
    """A Temporal runtime whose metrics go to ``telemetry``'s meter (None: the default runtime,
    when metrics are off). One per telemetry, made on first use."""
    t = telemetry or current()
    if not t.metering:
        return None
    made = _runtimes.get(id(t))
    if made is None:
        buffer = MetricBuffer(100_000, MetricBufferDurationFormat.SECONDS)
        made = Runtime(telemetry=TelemetryConfig(metrics=buffer)), buffer
        _runtimes[id(t)] = made
    return made[0]


def sdk_metrics(telemetry: Telemetry | None = None) -> MetricsExporter | None:
    """The exporter that drains the SDK's metrics into ``telemetry``'s meter provider (run it
    with ``async with`` while the worker runs), or None when metrics are off."""
    t = telemetry or current()
    runtime = temporal_runtime(t)
    if runtime is None or t.meter_provider is None:
        return None
    return MetricsExporter(_runtimes[id(t)][1], t.meter_provider)


def tracing_interceptor(telemetry: Telemetry | None = None) -> TracingInterceptor:
    """Temporal's tracing interceptor on ``telemetry``'s tracer: the client's start, the
    workflow, its activities and signals join one trace through Temporal headers."""
    return TracingInterceptor((telemetry or current()).tracer)


class ObservingInterceptor(Interceptor):
    """Observes every activity of a worker (see the module's docstring)."""

    def __init__(
        self,
        telemetry: Telemetry | None = None,
        spec_of: Callable[[SpecTask], MigrationSpec] | None = None,
    ) -> None:
        self.telemetry = telemetry
        # The spec a task names by hash (the activities' own loader, cached per worker): for
        # the collection and versions that label what the task reports.
        self.spec_of = spec_of
        # The phase each migration was last seen entering on this worker: log lines of its
        # other activities carry it.
        self.phases: dict[str, str] = {}

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Observer(next, self)


async def _spec(root: ObservingInterceptor, arg: Any) -> MigrationSpec | None:
    """The spec a task names, or None (not a migration's task, or the activity will refuse
    it and say why)."""
    if root.spec_of is None or not isinstance(arg, SpecTask):
        return None
    try:
        return await asyncio.to_thread(root.spec_of, arg)
    except Exception:
        return None


def _migration_of(
    arg: Any, info: activity.Info, spec: MigrationSpec | None
) -> tuple[str | None, str | None, str | None]:
    """(migration id, tenant, collection) of an activity's input."""
    migration = getattr(arg, "migration_id", None) or (spec.migration_id if spec else None)
    tenant = getattr(arg, "tenant", None) or (spec.tenant if spec else None)
    collection = getattr(arg, "collection", None) or (spec.collection if spec else None)
    return migration or info.workflow_id, tenant, collection


class _Observer(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: ObservingInterceptor) -> None:
        super().__init__(next)
        self.root = root
        self.copy_key: int | None = None
        self.labels: dict[str, str] = {}

    @property
    def telemetry(self) -> Telemetry:
        return self.root.telemetry or current()

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        super().init(_Heartbeats(outbound, self))

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        arg = input.args[0] if input.args else None
        spec = await _spec(self.root, arg)
        migration, tenant, collection = _migration_of(arg, info, spec)
        shard = getattr(getattr(arg, "shard", None), "index", None)
        stage = SHARD_STAGES.get(info.activity_type)
        m = self.telemetry.metrics
        with working(
            migration_id=migration,
            tenant=tenant,
            collection=collection,
            shard=shard,
            task=info.activity_type,
            phase=self.root.phases.get(migration or ""),
        ) as work:
            if info.activity_type == "copy_shard" and migration is not None and shard is not None:
                self.labels = {
                    names.MIGRATION: migration,
                    names.TENANT: tenant or "",
                    names.COLLECTION: collection or "",
                }
                self.copy_key = m.copies.begin(migration, shard, _resumed_count(info))
            began = time.monotonic()
            try:
                if stage is None:
                    result = await super().execute_activity(input)
                else:
                    with PeakMemory(every=0.2) as memory:
                        result = await super().execute_activity(input)
                    if _finished(result):
                        m.shard_done(
                            migration or "",
                            stage,
                            time.monotonic() - began,
                            read_bytes=work.read_bytes,
                            written_bytes=work.written_bytes,
                            peak_memory=memory.peak,
                        )
            finally:
                if self.copy_key is not None:
                    m.copies.end(self.copy_key)
            self._observe(info.activity_type, arg, result, work, spec)
            return result

    def _observe(
        self, kind: str, arg: Any, result: Any, work: Work, spec: MigrationSpec | None
    ) -> None:
        """Metrics and log lines from what an activity returned."""
        m = self.telemetry.metrics
        migration = work.migration_id or ""
        if isinstance(result, CopyShardResult) and result.complete:
            shared = spec is not None and spec.records == "shared"
            log.info(
                "shard %s %s: %s vectors in %.1f s (%s re-copied)",
                result.shard,
                "read and checked (records shared, nothing written)" if shared else "copied",
                f"{result.copied:,}",
                result.seconds,
                result.recopied,
            )
        elif isinstance(result, ArtifactRef):
            m.record(names.INDEX_BUILD_DURATION, result.seconds, {names.INDEX_KIND: result.kind})
            log.info(
                "index of shard %s %s: %s %s vectors in %.1f s",
                result.shard,
                "reused" if result.reused else "built",
                result.kind,
                f"{result.count:,}",
                result.seconds,
            )
        elif isinstance(result, CatchUpResult):
            m.catch_up(migration, result.applied, result.lag)
        elif isinstance(result, ShadowResult):
            m.shadow(migration, str(getattr(arg, "candidate", "")), result.figures)
        elif isinstance(getattr(result, "report", None), GateReport):
            source = spec.source.name if spec else "source"
            target = spec.target.name if spec else "target"
            report: GateReport = result.report
            m.gate_report(migration, source, target, report)
            failed = report.failures()
            log.info("gates %s%s", "passed" if report.passed else "failed: ", "; ".join(failed))
        elif kind == "record" and getattr(arg, "kind", None) == "phase":
            data = getattr(arg, "data", {}) or {}
            entered = str(data.get("to", ""))
            if entered:
                self.root.phases[migration] = entered
                m.phase(migration, entered)
                log.info(
                    "phase %s -> %s",
                    data.get("from", "?"),
                    entered,
                    extra={"phase": entered, "actor": getattr(arg, "actor", None)},
                )


def _finished(result: Any) -> bool:
    """Whether a shard's activity finished its shard (a paused copy returns part-way)."""
    return not (isinstance(result, CopyShardResult) and not result.complete)


def _resumed_count(info: activity.Info) -> int:
    """Vectors a copy had done before this attempt, from its last heartbeat."""
    details = info.heartbeat_details
    if details and isinstance(details[0], dict):
        return int(details[0].get("copied", 0) or 0)
    return 0


class _Heartbeats(ActivityOutboundInterceptor):
    """Follows a copy's heartbeats: each carries the shard's running count."""

    def __init__(self, next: ActivityOutboundInterceptor, observer: _Observer) -> None:
        super().__init__(next)
        self.observer = observer

    def heartbeat(self, *details: Any) -> None:
        key = self.observer.copy_key
        if key is not None and details and isinstance(details[0], dict):
            copied = details[0].get("copied")
            if isinstance(copied, int):
                self.observer.telemetry.metrics.copy_progress(key, copied, self.observer.labels)
        super().heartbeat(*details)
