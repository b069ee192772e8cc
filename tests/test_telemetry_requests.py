"""A gateway request's telemetry without HTTP: the request middleware and the routing notes
around an app, as the gateway stacks them. The request histogram kept for Prometheus directly
reads as the OpenTelemetry exporter's; a request whose trace is not sampled makes no span and
builds no attributes, yet its store calls stay out of any trace; a sampled caller's trace is
continued whatever the sampler says of new traces."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from tests.conftest import Sandbox
from tests.helpers import memory_telemetry
from vecmigrate.serving.gateway import _RoutingNotes
from vecmigrate.serving.router import Router
from vecmigrate.telemetry import names
from vecmigrate.telemetry.http import RequestNotes, RequestTelemetry, request_notes
from vecmigrate.telemetry.metrics import PrometheusHistogram
from vecmigrate.telemetry.setup import Telemetry, configure

SEARCH = "/v1/{tenant}/{collection}/search"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


def family(text: str, name: str) -> list[str]:
    """The lines of one metric family in an exposition, sorted (series order is free)."""
    return sorted(line for line in text.splitlines() if name in line)


def test_the_request_histogram_kept_for_prometheus_reads_as_the_exporters() -> None:
    direct = configure("d", metrics_default="prometheus", environ={})
    sdk = configure(
        "s", metrics_default="prometheus", environ={}, metric_readers=[InMemoryMetricReader()]
    )
    name = names.GATEWAY_DURATION.prometheus
    try:
        assert direct.prometheus_only
        assert not sdk.prometheus_only
        assert direct.registry is not None
        assert sdk.registry is not None
        # Before any request neither exposes the family.
        assert family(generate_latest(direct.registry).decode(), name) == []
        served = {
            names.HTTP_METHOD: "POST",
            names.HTTP_STATUS: 200,
            names.HTTP_ROUTE: SEARCH,
            names.TENANT: "acme",
            names.VERSION: "v1",
        }
        refused = {names.HTTP_METHOD: "POST", names.HTTP_STATUS: 401}  # no route, no tenant
        # On a bound, between bounds, below the first and above the last.
        values = [(served, 0.001), (served, 0.0004), (served, 0.00005), (refused, 7.0)]
        values += [(refused, 0.0001), (served, 2.5), (served, 0.3)]
        for t in (direct, sdk):
            kept = {}
            for labels, seconds in values:
                if id(labels) not in kept:
                    kept[id(labels)] = t.metrics.recorder(names.GATEWAY_DURATION, labels)
                kept[id(labels)](seconds)
        for exposition in (generate_latest, generate_openmetrics):
            ours = family(exposition(direct.registry).decode(), name)
            theirs = family(exposition(sdk.registry).decode(), name)
            assert ours == theirs
            assert any('http_route=""' in line for line in ours)  # the exporter's backfill
        count = [line for line in ours if line.startswith(name + "_count")]
        assert sorted(float(line.rsplit(" ", 1)[1]) for line in count) == [2.0, 5.0]
    finally:
        direct.shutdown()
        sdk.shutdown()
    assert family(generate_latest(direct.registry).decode(), name) == []  # unregistered


def test_a_histogram_kept_for_prometheus_needs_buckets() -> None:
    direct = configure("d", metrics_default="prometheus", environ={})
    try:
        assert direct.registry is not None
        with pytest.raises(ValueError, match=names.COPY_VECTORS.name):
            PrometheusHistogram(names.COPY_VECTORS, direct.registry)
    finally:
        direct.shutdown()


@pytest.fixture
def one_in_none(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Telemetry, Any]]:
    """Telemetry whose sampler keeps no new trace (a ratio of 0) but follows a caller's
    decision, as ``parentbased_traceidratio`` does at any ratio; spans kept in memory."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    t, exporter = memory_telemetry("g")
    yield t, exporter
    t.shutdown()


def test_an_unsampled_request_builds_nothing_and_a_sampled_caller_is_still_traced(
    sandbox: Sandbox, one_in_none: tuple[Telemetry, InMemorySpanExporter]
) -> None:
    t, exporter = one_in_none
    sandbox.seed(200)
    router = Router(sandbox.catalog, refresh_seconds=60.0)
    noting = _RoutingNotes(router, t)
    version = router.routing("default", "docs").read_version
    seen: list[RequestNotes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        note = request_notes()
        assert note is not None
        note.tenant, note.collection = "default", "docs"
        noting("default", "docs", version)
        with t.tracer.start_as_current_span("store.search"):  # as a store call beneath it
            pass
        seen.append(note)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = RequestTelemetry(app, t, route_of=lambda _: SEARCH)

    def request(traceparent: str | None) -> None:
        headers = [(b"host", b"gateway")]
        if traceparent is not None:
            headers.append((b"traceparent", traceparent.encode()))
        path = "/v1/default/docs/search"
        scope = {"type": "http", "method": "POST", "scheme": "http", "path": path}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(_: dict[str, Any]) -> None:
            return None

        asyncio.run(middleware({**scope, "headers": headers}, receive, send))

    try:
        request(None)  # a new trace: the sampler keeps none
        assert exporter.get_finished_spans() == ()  # not the request's, nor the store call's
        assert not seen[0].recording
        assert seen[0].attributes == {}
        request(f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-00")  # the caller did not sample
        assert exporter.get_finished_spans() == ()
        request(f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01")  # the caller sampled: traced
        store, served = exporter.get_finished_spans()
    finally:
        router.close()
    assert seen[2].recording
    assert served.kind == SpanKind.SERVER
    assert served.name == f"POST {SEARCH}"
    assert served.context is not None
    assert served.context.trace_id == TRACE_ID
    assert served.parent is not None
    assert served.parent.span_id == CALLER_SPAN
    assert store.parent is not None
    assert store.parent.span_id == served.context.span_id
    attributes = served.attributes or {}
    assert attributes[names.ATTR_READ_VERSION] == version
    assert attributes[names.ATTR_CANARY] is False
    assert attributes[names.ATTR_VERSION] == version
    assert attributes[names.HTTP_ROUTE] == SEARCH
    # Every request is measured, sampled or not.
    assert t.registry is not None
    text = generate_latest(t.registry).decode()
    count = family(text, names.GATEWAY_DURATION.prometheus + "_count")
    assert len(count) == 1
    assert count[0].endswith(" 3.0")
