"""Traces, metrics and logs of a real migration on a real Temporal dev server, and the pieces
they are made of: set-up from OTEL_* variables, metric names, the store proxy, log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox
from tests.helpers import memory_telemetry
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import free_port
from vecmigrate.errors import ConfigurationError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.stores import WHOLE, BuiltinStore, Scope, open_store
from vecmigrate.telemetry import names
from vecmigrate.telemetry.context import working
from vecmigrate.telemetry.logs import ExpectedErrors, JsonFormatter
from vecmigrate.telemetry.setup import Telemetry, configure, install, uninstall
from vecmigrate.workers.connection import connect
from vecmigrate.workers.main import run_worker


def memory_spans(service: str) -> Iterator[InMemorySpanExporter]:
    """Telemetry of ``service`` that keeps every span in memory and serves metrics for
    Prometheus, installed until the fixture that yields from it ends."""
    telemetry, exporter = memory_telemetry(service)
    install(telemetry)
    yield exporter
    uninstall()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Telemetry that keeps every span in memory and serves metrics for Prometheus."""
    yield from memory_spans("vecmigrate-test")


@asynccontextmanager
async def worker_process(
    env: WorkflowEnvironment, sandbox: Sandbox
) -> AsyncIterator[tuple[str, str]]:
    """A worker as `vecmigrate worker` runs it (its own traced client, probes on a free
    port), on a task queue of its own; yields (task queue, probe URL)."""
    queue = f"tq-{uuid.uuid4().hex[:10]}"
    port = free_port()
    stop = asyncio.Event()
    address = env.client.service_client.config.target_host
    task = asyncio.ensure_future(
        run_worker(
            address,
            queue,
            sandbox.catalog.url,
            concurrency=4,
            stop=stop,
            handle_signals=False,
            http=f"127.0.0.1:{port}",
        )
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if task.done():
                task.result()
            try:
                if await asyncio.to_thread(_get, url + "/readyz") == 200:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        yield queue, url
    finally:
        stop.set()
        await task


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by (name, labels)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, val) in ls for k, val in labels.items())
    )


async def test_a_migration_is_one_trace_from_the_client_start_to_the_store_calls(
    env: WorkflowEnvironment, sandbox: Sandbox, spans: InMemorySpanExporter
) -> None:
    sandbox.seed(2000)
    spans.clear()  # the seeding's own store calls
    spec = sandbox.spec()
    async with worker_process(env, sandbox) as (queue, _):
        client = await connect(env.client.service_client.config.target_host)
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        assert (await mc.result(mid)).phase == Phase.COMPLETED
    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    traces = {s.context.trace_id for s in finished if s.context is not None}
    assert len(traces) == 1, sorted({s.name for s in finished})
    by_id = {s.context.span_id: s for s in finished if s.context is not None}
    named = {s.name for s in finished}
    assert {
        "StartWorkflow:MigrationWorkflow",
        "RunWorkflow:MigrationWorkflow",
        "RunActivity:copy_shard",
        "RunActivity:build_shard_index",
        "RunActivity:validate",
        "store.read_batch",
        "store.upsert",
    } <= named

    def ancestry(span: ReadableSpan) -> list[str]:
        chain = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            chain.append(span.name)
        return chain

    # Each batch written by a copy hangs under that copy's activity, which the workflow started,
    # under the client's start: one tree (Temporal's interceptor parents the workflow's own
    # spans and the activities it starts to the start, side by side).
    upsert = next(s for s in finished if s.name == "store.upsert")
    assert ancestry(upsert) == [
        "RunActivity:copy_shard",
        "StartActivity:copy_shard",
        "StartWorkflow:MigrationWorkflow",
    ]
    run = next(s for s in finished if s.name == "RunWorkflow:MigrationWorkflow")
    assert ancestry(run) == ["StartWorkflow:MigrationWorkflow"]
    attrs = dict(upsert.attributes or {})
    assert attrs[names.ATTR_MIGRATION] == mid
    assert attrs[names.ATTR_VERSION] == "v2"
    assert attrs[names.ATTR_SHARD] in (0, 1, 2)
    assert int(attrs[names.ATTR_RECORDS]) > 0
    assert int(attrs[names.ATTR_BYTES]) > 0
    # The index build reads its shard batch by batch inside its own activity.
    build_reads = [
        s
        for s in finished
        if s.name == "store.read_batch" and ancestry(s)[0] == "RunActivity:build_shard_index"
    ]
    assert build_reads
    assert all(dict(s.attributes or {})[names.ATTR_SHARD] >= 0 for s in build_reads)


async def test_worker_metrics_during_a_migration_and_its_log_lines(
    env: WorkflowEnvironment,
    sandbox: Sandbox,
    spans: InMemorySpanExporter,
) -> None:
    sandbox.seed(4000)
    # Throttled so that the copy lasts a few seconds: the live copy gauges are scraped mid-copy.
    spec = sandbox.spec(max_vectors_per_second=1500, batch_size=250)
    seen: dict[str, float] = {}
    lines = JsonLines()
    worker_log = logging.getLogger("vecmigrate.worker")
    worker_log.addHandler(lines)
    worker_log.setLevel(logging.INFO)
    async with worker_process(env, sandbox) as (queue, url):
        mc = MigrationClient(env.client, queue)
        mid = await mc.start(spec, operator="alice")
        result = asyncio.ensure_future(mc.result(mid))
        live = {names.COPY_RATE.prometheus, names.SHARD_COPIED.prometheus}
        while not result.done():
            samples = await asyncio.to_thread(scrape, url + "/metrics")
            for name in live:
                seen[name] = max(seen.get(name, 0.0), total(samples, name, migration=mid))
            await asyncio.sleep(0.2)
        assert (await result).phase == Phase.COMPLETED
        samples = await asyncio.to_thread(scrape, url + "/metrics")
    # Live while the copies ran.
    assert seen[names.COPY_RATE.prometheus] > 0
    assert seen[names.SHARD_COPIED.prometheus] > 0
    # Counted over the run.
    assert total(samples, names.COPY_VECTORS.prometheus, migration=mid) == 4000
    assert total(samples, names.SHARDS_COMPLETED.prometheus, migration=mid, stage="copy") == 3
    assert total(samples, names.SHARDS_COMPLETED.prometheus, migration=mid, stage="index") == 3
    for metric in (
        names.SHARD_DURATION,
        names.SHARD_READ,
        names.SHARD_WRITTEN,
        names.INDEX_BUILD_DURATION,
    ):
        assert total(samples, metric.prometheus + "_count") >= 3, metric.name
    assert total(samples, names.SHARD_WRITTEN.prometheus + "_sum", stage="copy") >= 4000 * 16 * 4
    assert total(samples, names.STORE_READ.prometheus, store="builtin") > 0
    assert total(samples, names.STORE_WRITTEN.prometheus, store="builtin") > 0
    assert total(samples, names.GATE_RECALL.prometheus, migration=mid, version="v2") > 0.8
    assert total(samples, names.GATE_PASSED.prometheus, migration=mid, gate="recall@10") == 1
    assert total(samples, names.DATA_QUALITY.prometheus, migration=mid, issue="nonfinite") == 0
    assert total(samples, names.MIGRATION_PHASE.prometheus, migration=mid, phase="COMPLETED") == 1
    assert total(samples, names.MIGRATION_PHASE.prometheus, migration=mid, phase="BACKFILLING") == 0
    # The Temporal SDK's own metrics, through the same endpoint.
    sdk = {n for n, _ in samples if n.startswith(names.TEMPORAL_PREFIX)}
    assert any(n.startswith("temporal_activity_execution_latency") for n in sdk), sorted(sdk)
    assert total(samples, "temporal_activity_task_received_total") >= 10
    assert "temporal_worker_task_slots_available" in sdk
    # One INFO line per phase change and per finished shard, each naming the migration.
    worker_log.removeHandler(lines)
    phases = [line for line in lines.lines if line["message"].startswith("phase ")]
    assert [p["message"] for p in phases][:2] == [
        "phase PLANNED -> PREPARING",
        "phase PREPARING -> BACKFILLING",
    ]
    assert phases[-1]["message"] == "phase FINALIZING -> COMPLETED"
    assert all(p["migration_id"] == mid for p in phases)
    copied = [line for line in lines.lines if re.match(r"shard \d copied", line["message"])]
    assert len(copied) == 3
    formatted = copied[0]
    assert formatted["migration_id"] == mid
    assert formatted["task"] == "copy_shard"
    assert formatted["shard"] in (0, 1, 2)
    assert re.fullmatch("[0-9a-f]{32}", formatted["trace_id"])


class JsonLines(logging.Handler):
    """Log lines as the worker prints them with --log-format json, parsed back."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_metric_names_are_what_prometheus_scrapes() -> None:
    reader = InMemoryMetricReader()
    from prometheus_client import generate_latest

    t = configure("names", metrics_default="prometheus", environ={}, metric_readers=[reader])
    try:
        m = t.metrics
        key = m.copies.begin("m", 0)
        for d in names.ALL:
            labels = {label: "x" for label in d.labels}
            if d.kind == "counter":
                m.add(d, 1, labels)
            elif d.kind == "histogram":
                m.record(d, 1, labels)
            elif d.kind == "gauge":
                m.set(d, 1, labels)
        m.copy_progress(key, 5, {})
        assert t.registry is not None
        text = generate_latest(t.registry).decode()
    finally:
        t.shutdown()
    found = {
        (family.name, s.name): tuple(sorted(k for k in s.labels if k != "le"))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    series = {sample for _, sample in found}
    for d in names.ALL:
        expected = d.prometheus + ("_count" if d.kind == "histogram" else "")
        assert expected in series, (d.name, sorted(series))
        labels = next(v for (_, s), v in found.items() if s == expected)
        assert set(labels) == set(d.label_names()), d.name


def test_telemetry_follows_the_otel_variables() -> None:
    nothing = configure("t", environ={})
    assert not nothing.tracing
    assert not nothing.metering
    console = configure("t", environ={"OTEL_TRACES_EXPORTER": "console"})
    assert console.tracing
    assert not console.metering
    otlp = configure("t", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert otlp.tracing
    assert otlp.tracer_provider is not None
    assert otlp.tracer_provider.resource.attributes["service.name"] == "t"
    # A region's worker names itself: the variable wins over the code's default.
    named = configure("t", environ={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "w-us"})
    assert named.tracer_provider is not None
    assert named.tracer_provider.resource.attributes["service.name"] == "w-us"
    http = configure(
        "t",
        environ={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        },
    )
    assert http.tracing
    assert http.metering
    assert http.registry is not None
    off = configure(
        "t",
        metrics_default="prometheus",
        environ={"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    )
    assert not off.tracing
    assert not off.metering
    for t in (console, otlp, http):
        t.shutdown()
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        configure("t", environ={"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigurationError, match="http/json"):
        configure(
            "t",
            environ={"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        )


def test_exemplars_are_taken_only_when_a_reader_sends_them_on() -> None:
    spans = [SimpleSpanProcessor(InMemorySpanExporter())]
    # A reader that sends exemplars on (OTLP does): the SDK's default, trace-based, so a
    # request measured inside its sampled span leaves one.
    reader = InMemoryMetricReader()
    both = configure(
        "t",
        metrics_default="prometheus",
        environ={},
        span_processors=spans,
        metric_readers=[reader],
    )
    with both.tracer.start_as_current_span("request"):
        both.metrics.record(names.GATEWAY_DURATION, 0.002, {names.HTTP_METHOD: "POST"})
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == names.GATEWAY_DURATION.name
        for point in metric.data.data_points
    ]
    assert [len(point.exemplars) for point in points] == [1]
    both.shutdown()
    # Prometheus alone drops them: none is taken, unless the variable asks for them.
    alone = configure("t", metrics_default="prometheus", environ={}, span_processors=spans)
    assert alone.meter_provider is not None
    assert isinstance(alone.meter_provider._sdk_config.exemplar_filter, AlwaysOffExemplarFilter)
    alone.shutdown()
    asked = configure(
        "t",
        metrics_default="prometheus",
        environ={"OTEL_METRICS_EXEMPLAR_FILTER": "trace_based"},
        span_processors=spans,
    )
    assert asked.meter_provider is not None
    assert not isinstance(asked.meter_provider._sdk_config.exemplar_filter, AlwaysOffExemplarFilter)
    asked.shutdown()


def test_the_store_proxy_traces_every_adapter_call_and_stays_an_instance_of_it(
    sandbox: Sandbox, spans: InMemorySpanExporter
) -> None:
    store = open_store(sandbox.store, Scope("default", "docs", "v1"), dimension=4)
    assert isinstance(store, BuiltinStore)
    ids = np.arange(100, dtype=np.int64)
    vectors = np.ones((100, 4), dtype=np.float32)
    with working(migration_id="m-1") as work:
        store.upsert(ids, vectors)
        read = sum(len(b) for b in store.iter_shard(WHOLE, 30))
    assert read == 100
    assert work.written_bytes == 100 * 8 + 100 * 16
    assert work.read_bytes == work.written_bytes
    done = {s.name: s for s in spans.get_finished_spans()}
    assert {"store.upsert", "store.read_batch"} <= set(done)
    attrs = dict(done["store.upsert"].attributes or {})
    assert attrs[names.ATTR_STORE] == "builtin"
    assert attrs[names.ATTR_MIGRATION] == "m-1"
    assert attrs[names.ATTR_RECORDS] == 100
    # Four batches (30, 30, 30, 10) and the empty read that ends the scan.
    assert sum(1 for s in spans.get_finished_spans() if s.name == "store.read_batch") == 5


def test_without_telemetry_a_store_is_the_adapter_itself(sandbox: Sandbox) -> None:
    install(Telemetry())
    store = open_store(sandbox.store, Scope("default", "docs", "v1"), dimension=4)
    assert type(store) is BuiltinStore


def test_an_expected_domain_error_is_one_line_and_a_bug_keeps_its_traceback() -> None:
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("test.expected")
    handler = Keep()
    handler.addFilter(ExpectedErrors())
    log.addHandler(handler)
    try:
        try:
            try:
                raise ValueError("dimension 3, expected 16")
            except ValueError as inner:
                raise ApplicationError(
                    "v1 holds 16-dimensional vectors, not 3", type="DataError", non_retryable=True
                ) from inner
        except ApplicationError:
            log.error("Completing activity as failed", exc_info=True)
        try:
            raise KeyError("a bug")
        except KeyError:
            log.error("Completing activity as failed", exc_info=True)
    finally:
        log.removeHandler(handler)
    expected, bug = records
    assert expected.exc_info is None
    assert expected.levelname == "WARNING"
    assert expected.getMessage() == (
        "Completing activity as failed: DataError: v1 holds 16-dimensional vectors, not 3 "
        "(not retried)"
    )
    # A bug keeps its traceback (rendered and scrubbed of secrets once a handler has seen it).
    assert bug.exc_info is not None or "KeyError: 'a bug'" in (bug.exc_text or "")
    assert bug.levelname == "ERROR"
