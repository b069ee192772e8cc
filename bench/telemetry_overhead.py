"""What tracing and metrics cost: copy throughput and gateway p99 with telemetry on and off.

    python bench/telemetry_overhead.py --vectors 200000 --dim 128 --requests 5000

"On" is what a deployment runs: every store call in a span (batch reads and writes), the spans
batched to an exporter (one that drops them here, so no collector's speed is measured), every
metric recorded for Prometheus, the gateway's requests traced and measured (a span per request
with the router's decisions, the request histogram, the routing gauges) and its access log as
deployed (``errors``: a JSON line for a 4xx, a 5xx or a slow request, written to /dev/null;
these searches are none of them). "Off" records nothing (OTEL_* unset: the store handles are
the adapters themselves, the request spans no-ops) and logs nothing below WARNING. Same run,
``--repeat`` pairs, which goes first alternating; medians compared.

- copy: a built-in-store migration's shards copied by ``copy_shard`` (as the copy activity runs
  it, inside a migration's work context), vectors/s;
- gateway: ``--requests`` single-vector searches over HTTP keep-alive against a collection
  served from an HNSW index, the p50 and p99 of their round trips; on twice, with every trace
  sampled (the SDK's default) and with 10 % sampled (``OTEL_TRACES_SAMPLER=
  parentbased_traceidratio``, ``OTEL_TRACES_SAMPLER_ARG=0.1``, what docs/observability.md
  recommends for a gateway), the three arms in a rotating order.
- telemetry per request: the CPU microseconds one request's telemetry costs, on minus off,
  measured without HTTP or a thread hop (the request middleware and the routing notes around
  an app that answers at once, ``--micro`` requests, best of 5): steadier than the p99 on a
  shared machine. Also with ``VECMIGRATE_GATEWAY_ACCESS_LOG=all`` (a JSON line a request),
  and with 10 % of traces sampled. Its share of the gateway's p50 round trip (telemetry off)
  is what the request pays on a quiet machine.
Target: each at most 3 % slower with telemetry on (the gateway: with traces sampled as
recommended; every trace sampled is reported beside it).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.common import alternating, report, scratch, sized_parser
from bench.copy_throughput import seeded_copy
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import sqlite_url
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.spec import BuiltinStoreRef
from vecmigrate.serving.gateway import Gateway, _RoutingNotes
from vecmigrate.serving.router import Router
from vecmigrate.telemetry.context import working
from vecmigrate.telemetry.http import RequestTelemetry
from vecmigrate.telemetry.logs import JsonFormatter
from vecmigrate.telemetry.setup import Telemetry, configure, current, install, uninstall
from vecmigrate.testing.chaos import builtin_version

TARGET = 0.03
# The share of new traces a gateway keeps, as docs/observability.md recommends.
SAMPLED = 0.1
A = TypeVar("A")


class Dropped(SpanExporter):
    """Takes every span and keeps none: the pipeline's cost without a collector's."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def telemetry(on: bool, sampled: float | None = None) -> Dropped | None:
    """Install telemetry on or off; the exporter counts the spans made while on. ``sampled``:
    the share of traces kept (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``), else all."""
    if not on:
        install(Telemetry())
        return None
    dropped = Dropped()
    sampler = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    sampler["OTEL_TRACES_SAMPLER_ARG"] = str(sampled)
    before = {name: os.environ.get(name) for name in sampler}
    if sampled is not None:
        os.environ.update(sampler)  # read by the SDK's tracer provider as it is made
    try:
        made = configure(
            "bench",
            metrics_default="prometheus",
            environ={},
            span_processors=[BatchSpanProcessor(dropped)],
        )
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    install(made)
    return dropped


def copy_run(vectors: np.ndarray, batch: int, on: bool) -> tuple[float, float, int]:
    """Vectors/s of one copy on fresh databases, the CPU seconds it took (every thread of this
    process: steadier than wall time on a shared machine), and the spans it made."""
    home = scratch("telemetry-copy")
    dropped = telemetry(on)
    copy = seeded_copy(home, vectors, batch)  # seeded with telemetry as set: stores opened so
    with working(migration_id="copy-bench", task="copy_shard"):
        cpu = time.process_time()
        seconds = copy()
        cpu = time.process_time() - cpu
    spans = _finish(dropped)
    return len(vectors) / seconds, cpu, spans


def _finish(dropped: Dropped | None) -> int:
    if dropped is None:
        return 0
    uninstall()  # flushes the batched spans into the counter
    return dropped.spans


def rotated(r: int, *runs: Callable[[], A]) -> list[A]:
    """Run ``runs`` starting with the ``r``-th (modulo their number), each pair of a repeat in
    another order; the results in the order given."""
    order = [(r + i) % len(runs) for i in range(len(runs))]
    done = {i: runs[i]() for i in order}
    return [done[i] for i in range(len(runs))]


def seed_gateway(vectors: np.ndarray) -> str:
    """A collection served from an HNSW index; returns the catalog URL."""
    home = scratch("telemetry-gateway")
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"))
    v1 = builtin_version(
        "v1", store, vectors.shape[1], {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
    )
    seed_collection(
        catalog, "default", "bench", v1, sequential_ids(len(vectors)), vectors, shards=1
    )
    return catalog.url


@contextmanager
def _requests_logged(on: bool) -> Iterator[None]:
    """With ``on``, the gateway's request log at INFO, formatted as JSON into /dev/null (its
    cost measured, its lines dropped) until the block ends."""
    requests_log = logging.getLogger("vecmigrate.gateway.requests")
    with open(os.devnull, "w") as devnull:
        sink = logging.StreamHandler(devnull)
        sink.setFormatter(JsonFormatter())
        if on:
            requests_log.addHandler(sink)
            requests_log.setLevel(logging.INFO)
        try:
            yield
        finally:
            requests_log.removeHandler(sink)
            requests_log.setLevel(logging.NOTSET)


def gateway_run(
    catalog_url: str, queries: np.ndarray, on: bool, sampled: float | None = None
) -> tuple[float, float, float, int]:
    """p99 and p50 milliseconds of single searches through the gateway, CPU microseconds per
    request (client and gateway: both run in this process), and the spans made (``sampled``:
    as for :func:`telemetry`)."""
    dropped = telemetry(on, sampled)
    with _requests_logged(on):
        gateway = Gateway(catalog_url, port=0, refresh=1.0).start()
        host, port = gateway.server.sock.getsockname()[:2]
        conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
        bodies = [json.dumps({"vector": q.tolist(), "k": 10}).encode() for q in queries]
        headers = {"Content-Type": "application/json"}
        times = []
        cpu = time.process_time()
        try:
            for n, body in enumerate(bodies):
                began = time.perf_counter()
                conn.request("POST", "/v1/default/bench/search", body, headers)
                response = conn.getresponse()
                response.read()
                if n >= len(bodies) // 10:  # the first tenth warms caches and connections
                    times.append((time.perf_counter() - began) * 1000)
                if response.status != 200:
                    raise SystemExit(f"search failed: {response.status}")
        finally:
            conn.close()
            gateway.stop()
    cpu_us = (time.process_time() - cpu) / len(bodies) * 1e6
    spans = _finish(dropped)
    times.sort()
    return times[int(len(times) * 0.99) - 1], statistics.median(times), cpu_us, spans


def telemetry_us(
    catalog_url: str,
    on: bool,
    requests: int,
    access_log: str = "errors",
    sampled: float | None = None,
) -> float:
    """CPU microseconds per request of the gateway's request telemetry (the middleware and
    the routing notes a search leaves) around an app that answers at once: best of 5."""
    dropped = telemetry(on, sampled)
    router = Router(Catalog(catalog_url), refresh_seconds=60.0)
    noting = _RoutingNotes(router, current())
    version = router.routing("default", "bench").read_version
    start = {"type": "http.response.start", "status": 200, "headers": []}
    done = {"type": "http.response.body", "body": b"{}"}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        noting("default", "bench", version)
        await send(start)
        await send(done)

    middleware = RequestTelemetry(
        app, current(), route_of=lambda _: "/v1/{tenant}/{collection}/search", access_log=access_log
    )
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/default/bench/search",
        "headers": [(b"host", b"gateway"), (b"content-type", b"application/json")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: dict[str, Any]) -> None:
        return None

    async def run(n: int) -> float:
        began = time.process_time()
        for i in range(n):
            await middleware(scope, receive, send)
            if i % 256 == 255:
                # Lets the span processor's thread export (its CPU is counted: process time),
                # as the gaps between a gateway's requests do; a tight loop fills its queue.
                time.sleep(0.001)
        return (time.process_time() - began) / n * 1e6

    try:
        with _requests_logged(on):
            best = min(asyncio.run(run(requests)) for _ in range(5))
    finally:
        router.close()
        _finish(dropped)
    return best


def main() -> None:
    p = sized_parser(__doc__, vectors=200_000, dim=128)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=5_000)
    p.add_argument("--repeat", type=int, default=5, help="pairs of runs, on and off")
    p.add_argument("--micro", type=int, default=20_000, help="requests of the microbenchmark")
    args = p.parse_args()
    vectors = clustered(args.vectors, args.dim, clusters=64, seed=3)
    queries = clustered(args.requests, args.dim, clusters=64, seed=4)
    catalog_url = seed_gateway(vectors)
    rows = []
    for r in range(args.repeat):
        (on_rate, on_cpu, on_spans), (off_rate, off_cpu, _) = alternating(
            r,
            lambda: copy_run(vectors, args.batch, True),
            lambda: copy_run(vectors, args.batch, False),
        )
        gateway = rotated(
            r,
            lambda: gateway_run(catalog_url, queries, True),
            lambda: gateway_run(catalog_url, queries, False),
            lambda: gateway_run(catalog_url, queries, True, sampled=SAMPLED),
        )
        (on_p99, on_p50, on_req, g_spans), (off_p99, off_p50, off_req, _) = gateway[:2]
        s_p99, s_p50, s_req, s_spans = gateway[2]
        micro_on, micro_off = alternating(
            r,
            lambda: telemetry_us(catalog_url, True, args.micro),
            lambda: telemetry_us(catalog_url, False, args.micro),
        )
        micro_all = telemetry_us(catalog_url, True, args.micro, access_log="all")
        micro_sampled = telemetry_us(catalog_url, True, args.micro, sampled=SAMPLED)
        rows.append(
            {
                "pair": r + 1,
                "copy on (vec/s)": on_rate,
                "copy off (vec/s)": off_rate,
                "copy CPU on (s)": on_cpu,
                "copy CPU off (s)": off_cpu,
                "copy spans": on_spans,
                "gateway p99 on (ms)": on_p99,
                "gateway p99 off (ms)": off_p99,
                "gateway p50 on (ms)": on_p50,
                "gateway p50 off (ms)": off_p50,
                "gateway CPU on (us/req)": on_req,
                "gateway CPU off (us/req)": off_req,
                "gateway spans": g_spans,
                "gateway p99 10 % sampled (ms)": s_p99,
                "gateway p50 10 % sampled (ms)": s_p50,
                "gateway CPU 10 % sampled (us/req)": s_req,
                "gateway spans 10 % sampled": s_spans,
                "load average": os.getloadavg()[0],
                "telemetry on (us/req)": micro_on,
                "telemetry off (us/req)": micro_off,
                "telemetry, all logged (us/req)": micro_all,
                "telemetry, 10 % sampled (us/req)": micro_sampled,
            }
        )

    def ratio(on: str, off: str) -> float:
        """The median over pairs of on/off (each pair ran under the same conditions)."""
        return statistics.median(float(row[on]) / float(row[off]) for row in rows)

    copy_slower = ratio("copy off (vec/s)", "copy on (vec/s)") - 1
    copy_cpu = ratio("copy CPU on (s)", "copy CPU off (s)") - 1
    p99_slower = ratio("gateway p99 on (ms)", "gateway p99 off (ms)") - 1
    p50_slower = ratio("gateway p50 on (ms)", "gateway p50 off (ms)") - 1
    gateway_cpu = ratio("gateway CPU on (us/req)", "gateway CPU off (us/req)") - 1
    s_p99_slower = ratio("gateway p99 10 % sampled (ms)", "gateway p99 off (ms)") - 1
    s_p50_slower = ratio("gateway p50 10 % sampled (ms)", "gateway p50 off (ms)") - 1
    s_cpu = ratio("gateway CPU 10 % sampled (us/req)", "gateway CPU off (us/req)") - 1

    def median(figure: str) -> float:
        return statistics.median(float(row[figure]) for row in rows)

    def spread(figure: str) -> str:
        values = [float(row[figure]) for row in rows]
        return f"{min(values):.2f} to {max(values):.2f}"

    def extra(figure: str) -> float:
        """The median over pairs of a microbenchmark figure minus telemetry off."""
        return statistics.median(
            float(row[figure]) - float(row["telemetry off (us/req)"]) for row in rows
        )

    per_request = extra("telemetry on (us/req)")
    per_request_all = extra("telemetry, all logged (us/req)")
    per_request_sampled = extra("telemetry, 10 % sampled (us/req)")
    p50_off_us = median("gateway p50 off (ms)") * 1000
    share = per_request / p50_off_us
    share_sampled = per_request_sampled / p50_off_us

    def verdict(value: float) -> str:
        return "met" if value <= TARGET else "NOT met"

    loads = [float(row["load average"]) for row in rows]
    summary = {
        "vectors, dim, batch": f"{args.vectors:,}, {args.dim}, {args.batch:,}",
        "copy with telemetry": f"{copy_slower:+.1%} wall, {copy_cpu:+.1%} CPU "
        f"(median of {args.repeat} pairs' ratios)",
        "gateway, every trace sampled": f"p50 {p50_slower:+.1%}, p99 {p99_slower:+.1%}, "
        f"CPU per request {gateway_cpu:+.1%}",
        "gateway, 10 % sampled": f"p50 {s_p50_slower:+.1%}, p99 {s_p99_slower:+.1%}, "
        f"CPU per request {s_cpu:+.1%}",
        "gateway p50 off / on / 10 % (ms, pairs' range)": f"{spread('gateway p50 off (ms)')} / "
        f"{spread('gateway p50 on (ms)')} / {spread('gateway p50 10 % sampled (ms)')}",
        "gateway p99 off / on / 10 % (ms, pairs' range)": f"{spread('gateway p99 off (ms)')} / "
        f"{spread('gateway p99 on (ms)')} / {spread('gateway p99 10 % sampled (ms)')}",
        "telemetry per request": f"{per_request:.1f} us CPU every trace sampled, "
        f"{per_request_sampled:.1f} us with 10 % sampled, {per_request_all:.1f} us with every "
        "request logged (median of pairs)",
        "telemetry's share of the p50 round trip": f"{share:.1%} every trace sampled, "
        f"{share_sampled:.1%} with 10 % sampled (of {p50_off_us:.0f} us)",
        "load average (1 min) during the pairs": f"{min(loads):.1f} to {max(loads):.1f}",
        "target": f"at most {TARGET:.0%} slower. Gateway at 10 % sampled (recommended): "
        f"{verdict(share_sampled)} by the per-request cost, {verdict(s_p99_slower)} by the "
        f"p99; every trace sampled: {verdict(share)} by the per-request cost, "
        f"{verdict(p99_slower)} by the p99. Copy: {verdict(copy_slower)} by wall time, "
        f"{verdict(copy_cpu)} by CPU",
    }

    def plot(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        x = [row["pair"] for row in rows]

        def on_and_off(ax: Any, figure: str, unit: str, title: str, ylabel: str) -> None:
            ax.plot(x, [row[f"{figure} on ({unit})"] for row in rows], "o-", label="telemetry on")
            ax.plot(x, [row[f"{figure} off ({unit})"] for row in rows], "s--", label="off")
            ax.set_title(title)
            ax.set_xlabel("pair")
            ax.set_ylabel(ylabel)
            ax.legend()

        on_and_off(left, "copy", "vec/s", "copy throughput", "vectors/s")
        on_and_off(right, "gateway p99", "ms", "gateway search p99", "ms")
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    report(
        "telemetry_overhead",
        "Telemetry on vs off (same run, alternating pairs)",
        rows,
        summary,
        plot=plot,
        out=args.out,
    )


if __name__ == "__main__":
    main()
