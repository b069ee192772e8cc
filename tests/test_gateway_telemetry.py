"""The gateway's telemetry on a real server (uvicorn on a port): a request's trace continues
the caller's through the router to the store calls, /metrics shows the request, error and
routing metrics with their labels, and the access log (every request a structured line when
asked, errors and slow requests by default) holds no secret."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Sandbox
from tests.test_routing import migrated
from tests.test_telemetry import memory_spans
from vecmigrate.control.devserver import free_port
from vecmigrate.errors import ConfigurationError
from vecmigrate.security.credentials import Credentials, new_api_key
from vecmigrate.serving.gateway import Gateway
from vecmigrate.serving.router import bucket
from vecmigrate.telemetry import names
from vecmigrate.telemetry.logs import JsonFormatter

pytestmark = pytest.mark.integration  # a uvicorn server and seeded collections: seconds

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"
SEARCH = "/v1/{tenant}/{collection}/search"
UPSERT = "/v1/{tenant}/{collection}/upsert"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Telemetry as the gateway's process sets it up, its spans kept in memory."""
    yield from memory_spans("vecmigrate-gateway")


class JsonLines(logging.Handler):
    """The gateway's request lines as ``VECMIGRATE_LOG_FORMAT=json`` prints them, parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.text.append(text)
        self.lines.append(json.loads(text))


@pytest.fixture
def request_lines() -> Iterator[JsonLines]:
    lines = JsonLines()
    logger = logging.getLogger("vecmigrate.gateway.requests")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(logging.NOTSET)


def key_on(side: str, below: float) -> str:
    """A request key whose canary bucket is below ``below`` (side "candidate") or not."""
    for n in range(1000):
        key = f"user-{n}"
        if (bucket(key) < below) == (side == "candidate"):
            return key
    raise AssertionError("no key found")


def by_id(finished: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in finished if s.context is not None}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_request_continues_the_callers_trace_down_to_the_store_calls(
    sandbox: Sandbox, spans: InMemorySpanExporter, request_lines: JsonLines
) -> None:
    migrated(sandbox)  # v1 and v2 hold the same vectors, both written
    # Exact search in each version's store (no index), so a search is a store call; half the
    # reads go to v2, and every read served by v1 is mirrored to v2.
    sandbox.route(
        "canary",
        read_index=None,
        candidate_version="v2",
        candidate_index=None,
        ramp_percent=50.0,
        shadow_percent=100.0,
    )
    query = np.full(sandbox.dim, 0.1).tolist()
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.2, access_log="all").start()
    try:
        spans.clear()
        with httpx.Client(base_url=gateway.url, headers={"traceparent": TRACEPARENT}) as http:
            read_side = http.post(
                "/v1/default/docs/search",
                json={"vector": query, "k": 3, "key": key_on("read", 50.0)},
            )
            canary = http.post(
                "/v1/default/docs/search",
                json={"vector": query, "k": 3, "key": key_on("candidate", 50.0)},
            )
            written = http.post(
                "/v1/default/docs/upsert", json={"ids": [777_001], "vectors": [query]}
            )
            wrong = http.post("/v1/default/docs/search", json={"vector": [0.1] * 3, "k": 3})
        untraced = httpx.post(f"{gateway.url}/v1/default/docs/search", json={"vector": query})
    finally:
        gateway.stop()  # finishes the shadow reads in flight
    assert [r.status_code for r in (read_side, canary, written, wrong, untraced)] == [
        200,
        200,
        200,
        400,
        200,
    ]
    assert read_side.json()["version"] == "v1"
    assert canary.json()["version"] == "v2"
    finished = list(spans.get_finished_spans())
    ids = by_id(finished)
    servers = [s for s in finished if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == [
        f"POST {SEARCH}",
        f"POST {SEARCH}",
        f"POST {UPSERT}",
        f"POST {SEARCH}",
        f"POST {SEARCH}",
    ]
    first, second, upsert, refused, root = servers
    # The caller's trace goes on: each traced request's span is a child of the caller's span.
    for server in (first, second, upsert, refused):
        assert server.context.trace_id == TRACE_ID
        assert parent_of(server) == CALLER_SPAN
        assert server.parent is not None
        assert server.parent.is_remote
    assert root.parent is None
    assert root.context.trace_id != TRACE_ID

    def beneath(server: ReadableSpan) -> list[ReadableSpan]:
        found = []
        for span in finished:
            up = parent_of(span)
            while up is not None and up != server.context.span_id and up in ids:
                up = parent_of(ids[up])
            if up == server.context.span_id:
                found.append(span)
        return found

    def version_of(span: ReadableSpan) -> Any:
        return (span.attributes or {}).get(names.ATTR_VERSION)

    # The read served by v1: its search in v1's store, and the shadow read on v2 (mirrored on
    # the router's thread) beneath the request's span, in the caller's trace.
    first_calls = beneath(first)
    assert sorted((s.name, version_of(s)) for s in first_calls) == [
        ("store.search", "v1"),
        ("store.search", "v2"),
    ]
    assert all(s.context.trace_id == TRACE_ID for s in first_calls)
    assert [(s.name, version_of(s)) for s in beneath(second)] == [("store.search", "v2")]
    # A write reaches both write versions' stores.
    assert sorted((s.name, version_of(s)) for s in beneath(upsert)) == [
        ("store.upsert", "v1"),
        ("store.upsert", "v2"),
    ]
    # The router's decisions.
    a, b = first.attributes or {}, second.attributes or {}
    for attrs in (a, b):
        assert attrs[names.ATTR_TENANT] == "default"
        assert attrs[names.ATTR_COLLECTION] == "docs"
        assert attrs[names.ATTR_READ_VERSION] == "v1"
        assert attrs[names.ATTR_CANDIDATE] == "v2"
        assert attrs[names.ATTR_RAMP] == 50.0
        assert attrs[names.ATTR_SHADOW] == 100.0
        assert attrs[names.HTTP_ROUTE] == SEARCH
        assert attrs[names.HTTP_STATUS] == 200
    assert (a[names.ATTR_VERSION], a[names.ATTR_CANARY], a[names.ATTR_SHADOWED]) == (
        "v1",
        False,
        True,
    )
    assert (b[names.ATTR_VERSION], b[names.ATTR_CANARY], b[names.ATTR_SHADOWED]) == (
        "v2",
        True,
        False,
    )
    assert list((upsert.attributes or {})["vecmigrate.routing.write_versions"]) == ["v1", "v2"]
    assert names.ATTR_VERSION not in (upsert.attributes or {})
    # An error: its type, no message anywhere (a 4xx is the caller's: status stays unset).
    bad = refused.attributes or {}
    assert bad[names.ERROR_TYPE] == "DataError"
    assert bad[names.HTTP_STATUS] == 400
    assert refused.status.status_code == StatusCode.UNSET
    assert not refused.events
    assert all(s.status.description is None for s in finished)
    # One log line a request, leading to its trace.
    lines = [line for line in request_lines.lines if line["route"] == SEARCH]
    assert [line["status"] for line in lines] == [200, 200, 400, 200]
    assert lines[0]["trace_id"] == f"{TRACE_ID:032x}"
    assert lines[0]["span_id"] == f"{first.context.span_id:016x}"
    assert (lines[1]["version"], lines[1]["tenant"], lines[1]["collection"]) == (
        "v2",
        "default",
        "docs",
    )
    assert lines[2]["error_type"] == "DataError"
    assert lines[2]["message"] == f"POST {SEARCH} 400"


def scrape(url: str, **headers: str) -> tuple[int, dict[tuple[str, frozenset[Any]], float]]:
    response = httpx.get(url, headers=headers)
    if response.status_code != 200:
        return response.status_code, {}
    return 200, {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: Any) -> float:
    """The sum of the samples of ``name`` with these labels and no others (an empty label is
    no label, to Prometheus as to the exporter, which fills the labels a point lacks so)."""
    wanted = frozenset((k, str(v)) for k, v in labels.items())
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and frozenset((k, lv) for k, lv in ls if lv != "") == wanted
    )


def test_metrics_are_scraped_from_the_gateway_with_their_labels(
    sandbox: Sandbox, spans: InMemorySpanExporter, request_lines: JsonLines
) -> None:
    vectors = sandbox.seed(400, tenant="acme", collection="docs")
    creds = Credentials()
    keys = {}
    for name, tenants, actions in (
        ("app", ["acme"], ["search", "write"]),
        ("acme-admin", ["acme"], ["admin"]),
        ("ops", ["*"], ["admin"]),
        ("other", ["globex"], ["search"]),
    ):
        secret, stored = new_api_key(name, tenants, ["*"], actions)
        keys[name] = secret
        creds.api_keys[stored.id] = stored
    gateway = Gateway(
        sandbox.catalog.url, port=0, refresh=0.2, credentials=creds, access_log="all"
    ).start()
    metrics = f"{gateway.url}/metrics"
    try:
        app = httpx.Client(base_url=gateway.url, headers={"X-API-Key": keys["app"]})
        for row in vectors[:5]:
            assert app.post("/v1/acme/docs/search", json={"vector": row.tolist()}).is_success
        assert app.post("/v1/acme/docs/search", json={"vector": [1.0, 2.0]}).status_code == 400
        assert httpx.post(f"{gateway.url}/v1/acme/docs/search", json={}).status_code == 401
        other = {"Authorization": f"Bearer {keys['other']}"}
        forbidden = httpx.post(f"{gateway.url}/v1/acme/docs/search", json={}, headers=other)
        assert forbidden.status_code == 403
        made_up = httpx.post(f"{gateway.url}/v1/made/up/search", json={}, headers=other)
        assert made_up.status_code == 403
        # /metrics names every tenant: it needs admin over all of them.
        assert scrape(metrics)[0] == 401
        assert scrape(metrics, **{"X-API-Key": keys["acme-admin"]})[0] == 403
        status, samples = scrape(metrics, Authorization=f"Bearer {keys['ops']}")
        assert status == 200
    finally:
        gateway.stop()
    duration = names.GATEWAY_DURATION.prometheus
    assert names.GATEWAY_DURATION.label_names() == (
        "http_request_method",
        "http_route",
        "http_response_status_code",
        "tenant",
        "version",
    )
    served = {
        "http_request_method": "POST",
        "http_route": SEARCH,
        "http_response_status_code": 200,
        "tenant": "acme",
        "version": "v1",
    }
    assert value(samples, duration + "_count", **served) == 5
    assert value(samples, duration + "_sum", **served) > 0
    assert value(samples, duration + "_bucket", **served, le="+Inf") == 5
    # Refused before the router answered: no version; before the credential reached the
    # tenant: no tenant either (a caller cannot grow the label sets).
    refused = {"http_request_method": "POST", "http_route": SEARCH}
    assert value(samples, duration + "_count", **refused, http_response_status_code=400) == 0
    assert (
        value(
            samples,
            duration + "_count",
            **refused,
            http_response_status_code=400,
            tenant="acme",
        )
        == 1
    )
    assert value(samples, duration + "_count", **refused, http_response_status_code=401) == 1
    assert value(samples, duration + "_count", **refused, http_response_status_code=403) == 2
    errors = names.GATEWAY_ERRORS.prometheus
    assert value(samples, errors, http_route=SEARCH, tenant="acme", error_type="DataError") == 1
    assert value(samples, errors, http_route=SEARCH, error_type="AuthenticationError") == 1
    assert value(samples, errors, http_route=SEARCH, error_type="AccessDeniedError") == 2
    assert not any("made" in str(labels) for _, labels in samples)
    # Scrapes and probes are neither measured nor logged.
    routes = {dict(ls).get("http_route") for n, ls in samples if n == duration + "_count"}
    assert routes == {SEARCH}
    # The routing row it serves by.
    where = {"tenant": "acme", "collection": "docs"}
    assert value(samples, names.ROUTING_READ_VERSION.prometheus, **where, version="v1") == 1
    assert value(samples, names.ROUTING_RAMP.prometheus, **where) == 0
    assert value(samples, names.ROUTING_SHADOW.prometheus, **where) == 0
    # Every request a line, and no credential in any of them.
    assert len(request_lines.lines) == 9
    logged = "\n".join(request_lines.text)
    for secret in keys.values():
        assert secret not in logged
    assert "Bearer" not in logged


def test_metrics_on_an_address_of_their_own_or_open(sandbox: Sandbox, spans: Any) -> None:
    vectors = sandbox.seed(200, tenant="acme", collection="docs")
    port = free_port()
    creds = Credentials()
    secret, stored = new_api_key("app", ["acme"], ["*"], ["search"])
    creds.api_keys[stored.id] = stored
    apart = Gateway(
        sandbox.catalog.url, port=0, credentials=creds, metrics=f"127.0.0.1:{port}"
    ).start()
    try:
        search = {"vector": vectors[0].tolist()}
        found = httpx.post(
            f"{apart.url}/v1/acme/docs/search", json=search, headers={"X-API-Key": secret}
        )
        assert found.is_success
        assert apart.metrics_url == f"http://127.0.0.1:{port}"
        # Not on the gateway's port at all; on its own, without a credential, with probes.
        assert httpx.get(f"{apart.url}/metrics", headers={"X-API-Key": secret}).status_code == 404
        status, samples = scrape(f"{apart.metrics_url}/metrics")
        assert status == 200
        assert (
            value(
                samples,
                names.GATEWAY_DURATION.prometheus + "_count",
                http_request_method="POST",
                http_route=SEARCH,
                http_response_status_code=200,
                tenant="acme",
                version="v1",
            )
            == 1
        )
        assert httpx.get(f"{apart.metrics_url}/healthz").status_code == 200
        assert httpx.get(f"{apart.metrics_url}/readyz").status_code == 200
    finally:
        apart.stop()
    # While it loads its collections: alive, not ready, the API not yet answering.
    port = free_port()
    loading = Gateway(sandbox.catalog.url, port=0, credentials=creds, metrics=f"127.0.0.1:{port}")
    preload, release = loading.router.preload, threading.Event()

    def held() -> list[tuple[str, str]]:
        release.wait(30)
        return preload()

    loading.router.preload = held  # type: ignore[method-assign]
    starting = threading.Thread(target=loading.start)
    starting.start()
    try:
        probes = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{probes}/healthz").status_code == 200:
                    break
            time.sleep(0.05)
        assert httpx.get(f"{probes}/healthz").status_code == 200
        waiting = httpx.get(f"{probes}/readyz")
        assert waiting.status_code == 503
        assert "loading" in waiting.text
        release.set()
        starting.join(30)
        assert httpx.get(f"{probes}/readyz").status_code == 200
        assert httpx.get(f"{loading.url}/health").status_code == 200
    finally:
        release.set()
        starting.join(30)
        loading.stop()
    opened = Gateway(sandbox.catalog.url, port=0, credentials=creds, metrics="open").start()
    try:
        assert scrape(f"{opened.url}/metrics")[0] == 200
    finally:
        opened.stop()
    with pytest.raises(ConfigurationError, match="VECMIGRATE_GATEWAY_METRICS"):
        Gateway(sandbox.catalog.url, port=0, metrics="everyone")


def test_a_failing_store_is_a_500_whose_span_names_the_error_type_only(
    sandbox: Sandbox, spans: InMemorySpanExporter, request_lines: JsonLines
) -> None:
    sandbox.seed(300)
    sandbox.route("exact", read_index=None)  # searches are store calls
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.2, metrics="open").start()
    try:
        query = {"vector": np.full(sandbox.dim, 0.1).tolist(), "k": 3}
        assert httpx.post(f"{gateway.url}/v1/default/docs/search", json=query).is_success
        # The store's table goes away under the gateway (a real fault, not a stand-in).
        db = sqlite3.connect(sandbox.root / "store.db")
        db.execute("DROP TABLE vm_vectors")
        db.commit()
        db.close()
        failed = httpx.post(f"{gateway.url}/v1/default/docs/search", json=query)
        status, samples = scrape(f"{gateway.url}/metrics")
    finally:
        gateway.stop()
    assert status == 200
    assert failed.status_code == 500
    assert "vm_vectors" not in failed.text
    server = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER][-1]
    store = [s for s in spans.get_finished_spans() if s.name == "store.search"][-1]
    assert store.parent is not None
    assert store.parent.span_id == server.context.span_id
    for span in (server, store):
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})[names.ERROR_TYPE] == "OperationalError"
        assert not span.events  # no exception event: its message names tables and SQL
    assert server.status.description is None
    assert (
        value(
            samples,
            names.GATEWAY_ERRORS.prometheus,
            http_route=SEARCH,
            tenant="default",
            error_type="OperationalError",
        )
        == 1
    )
    line = request_lines.lines[-1]
    assert (line["level"], line["status"], line["error_type"]) == ("ERROR", 500, "OperationalError")
    assert "vm_vectors" not in json.dumps(request_lines.lines)


def test_a_client_that_leaves_before_the_answer_is_not_a_server_error(
    sandbox: Sandbox, spans: InMemorySpanExporter, request_lines: JsonLines
) -> None:
    sandbox.seed(200)
    gateway = Gateway(sandbox.catalog.url, port=0).start()
    try:
        host, port = gateway.server.sock.getsockname()[:2]
        with socket.create_connection((host, port)) as sock:
            sock.sendall(
                b"POST /v1/default/docs/search HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            time.sleep(0.3)  # the body is being read
        for _ in range(50):
            if request_lines.lines:
                break
            time.sleep(0.1)
    finally:
        gateway.stop()
    [line] = request_lines.lines
    assert (line["status"], line["error_type"], line["level"]) == (499, "499", "INFO")
    [server] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.status.status_code == StatusCode.UNSET


def test_by_default_the_access_log_has_the_errors_and_the_slow_requests_only(
    sandbox: Sandbox,
    spans: InMemorySpanExporter,
    request_lines: JsonLines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors = sandbox.seed(200)
    monkeypatch.delenv("VECMIGRATE_GATEWAY_ACCESS_LOG", raising=False)
    monkeypatch.delenv("VECMIGRATE_GATEWAY_SLOW_MS", raising=False)
    query = {"vector": vectors[0].tolist(), "k": 3}
    quick = Gateway(sandbox.catalog.url, port=0).start()
    try:
        for _ in range(3):
            assert httpx.post(f"{quick.url}/v1/default/docs/search", json=query).is_success
        bad = httpx.post(f"{quick.url}/v1/default/docs/search", json={"vector": [1.0], "k": 3})
        assert bad.status_code == 400
        status, samples = scrape(f"{quick.url}/metrics")
    finally:
        quick.stop()
    # The successes are counted and traced, not logged; the error is a line.
    assert [(line["status"], line["level"]) for line in request_lines.lines] == [(400, "INFO")]
    assert request_lines.lines[0]["error_type"] == "DataError"
    assert status == 200
    served = {
        "http_request_method": "POST",
        "http_route": SEARCH,
        "http_response_status_code": 200,
        "tenant": "default",
        "version": "v1",
    }
    assert value(samples, names.GATEWAY_DURATION.prometheus + "_count", **served) == 3
    servers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == 4
    # Every request is slower than 0 ms: each is a WARNING line, leading to its trace.
    request_lines.lines.clear()
    monkeypatch.setenv("VECMIGRATE_GATEWAY_SLOW_MS", "0")
    slow = Gateway(sandbox.catalog.url, port=0).start()
    try:
        assert httpx.post(f"{slow.url}/v1/default/docs/search", json=query).is_success
    finally:
        slow.stop()
    [line] = request_lines.lines
    assert (line["level"], line["status"], line["version"]) == ("WARNING", 200, "v1")
    last = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER][-1]
    assert line["trace_id"] == f"{last.context.trace_id:032x}"
    monkeypatch.setenv("VECMIGRATE_GATEWAY_SLOW_MS", "soon")
    with pytest.raises(ConfigurationError, match="VECMIGRATE_GATEWAY_SLOW_MS='soon'"):
        Gateway(sandbox.catalog.url, port=0)
    monkeypatch.delenv("VECMIGRATE_GATEWAY_SLOW_MS")
    monkeypatch.setenv("VECMIGRATE_GATEWAY_ACCESS_LOG", "some")
    with pytest.raises(ConfigurationError, match="VECMIGRATE_GATEWAY_ACCESS_LOG='some'"):
        Gateway(sandbox.catalog.url, port=0)


SERVE_WITH_GLOBAL_PROVIDERS = """
import sys, httpx
from tests.helpers import memory_telemetry
from vecmigrate.serving.gateway import Gateway
from vecmigrate.telemetry.setup import install

telemetry, spans = memory_telemetry("vecmigrate-gateway")
install(telemetry, set_global=True)  # as the serve command does
gateway = Gateway(sys.argv[1], port=0, metrics="open").start()
try:
    found = httpx.post(gateway.url + "/v1/default/docs/search", json={"vector": [0.1] * 16})
    assert found.is_success, found.text
    page = httpx.get(gateway.url + "/metrics").text
finally:
    gateway.stop()
for span in spans.get_finished_spans():
    print("span", span.instrumentation_scope.name, span.kind.name, span.name)
print("families", page.count("# TYPE http_server_request_duration_seconds histogram"))
"""


def test_with_the_global_providers_set_a_request_is_traced_and_measured_once(
    sandbox: Sandbox,
) -> None:
    # FastAPI traces and measures requests itself once OpenTelemetry's global providers are
    # set (the serve command sets them): the gateway's own telemetry must be the only one.
    import subprocess
    import sys

    sandbox.seed(200, dim=16)
    done = subprocess.run(
        [sys.executable, "-c", SERVE_WITH_GLOBAL_PROVIDERS, sandbox.catalog.url],
        cwd=Path(__file__).resolve().parent.parent,  # where the script imports tests.helpers
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    spans = [line.split(" ", 3)[1:] for line in done.stdout.splitlines() if line.startswith("span")]
    assert spans == [["vecmigrate", "SERVER", f"POST {SEARCH}"]]
    assert "families 1" in done.stdout


def test_a_latency_budget_reads_what_the_gateways_clients_waited_for(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The latencies a budget reads are the gateway's whole requests (HTTP, parsing, the
    thread hop, the answer), not the router's search alone: 50 ms spent in the request outside
    the router count. Each search counts once, and a refused one not at all."""
    from vecmigrate.serving import gateway as gateway_module

    sandbox.seed(500)
    query = np.full(sandbox.dim, 0.1).tolist()
    parse = gateway_module._matrix

    def slow_parse(rows: list[list[float]], what: str) -> Any:
        time.sleep(0.05)
        return parse(rows, what)

    monkeypatch.setattr(gateway_module, "_matrix", slow_parse)
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.2).start()
    router_ms: list[float] = []
    search = gateway.router.search

    def timed_search(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return search(*args, **kwargs)
        finally:
            router_ms.append((time.perf_counter() - began) * 1000)

    monkeypatch.setattr(gateway.router, "search", timed_search)
    try:
        with httpx.Client(base_url=gateway.url) as http:
            answered = [
                http.post("/v1/default/docs/search", json={"vector": query, "k": 3})
                for _ in range(3)
            ]
            refused = http.post("/v1/default/docs/search", json={"vector": [0.1] * 3})
        gateway.router.latency.tick()
        seen = gateway.router.latency.summary("default", "docs")
    finally:
        gateway.stop()
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert refused.status_code == 400
    assert len(router_ms) == 4, router_ms
    assert max(router_ms) < 50, router_ms
    assert seen is not None
    assert seen.count == 3, seen
    assert seen.p50_ms >= 50, seen
