"""Worker process: runs migration workflows and their activities against one catalog.

Run it with ``vecmigrate worker`` or ``python -m vecmigrate.workers.main``.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Run as ``python -m vecmigrate.workers.main``: choose the BLAS kernel before anything
    # below imports numpy or FAISS, as the ``vecmigrate`` program does (``vecmigrate.blas``).
    # Imported as a library, the program that imports it keeps its own BLAS set-up.
    from vecmigrate.blas import prefer_core

    prefer_core()

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from vecmigrate import blas
from vecmigrate.activities.compaction import CompactionActivities
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.config import build_threads_default, default_catalog_url
from vecmigrate.security.keyring import environment_keyring
from vecmigrate.telemetry.exposition import ProbeServer, parse_address
from vecmigrate.telemetry.logs import configure_logging, crash_traces
from vecmigrate.telemetry.setup import configure, current, install, version
from vecmigrate.workers.connection import TemporalSettings, connect, default_task_queue
from vecmigrate.workers.telemetry import ObservingInterceptor, sdk_metrics
from vecmigrate.workflows.compaction import CompactionWorkflow
from vecmigrate.workflows.identity import CallerInterceptor
from vecmigrate.workflows.migration import MigrationWorkflow
from vecmigrate.workflows.regional import RegionalMigrationWorkflow
from vecmigrate.workflows.retention import RetentionWorkflow
from vecmigrate.workflows.scheduled import ScheduledMigrationWorkflow


def build_worker(
    client: Client,
    task_queue: str,
    catalog_url: str,
    executor: ThreadPoolExecutor,
    *,
    max_concurrent_activities: int = 4,
    build_threads: int = 0,
    region: str | None = None,
) -> Worker:
    """A worker for the migration workflows and their activities.

    Activities are synchronous and CPU- or I/O-heavy, so they run on ``executor``; index builds
    use ``build_threads`` threads each (0: the cores split among the shards built at once). A
    worker of a ``region`` runs only that region's activities (others are refused before they
    touch anything) against the region's own catalog and stores.
    """
    acts = MigrationActivities(
        catalog_url, build_threads=build_threads, region=region, slots=max_concurrent_activities
    )
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[
            MigrationWorkflow,
            RegionalMigrationWorkflow,
            ScheduledMigrationWorkflow,
            RetentionWorkflow,
            CompactionWorkflow,
        ],
        activities=acts.all() + CompactionActivities(catalog_url).all(),
        activity_executor=executor,
        # Who sent each message (its ``vecmigrate-caller`` header), for the operator roles;
        # traces, metrics and logs of every activity.
        interceptors=[CallerInterceptor(), ObservingInterceptor(spec_of=acts.spec)],
        max_concurrent_activities=max_concurrent_activities,
        # Progress views and the live status read a copy's count from its heartbeats, which
        # the SDK sends at most once per 80 % of the heartbeat timeout by default (24 s at the
        # spec's 30 s): bars would jump and the live rate lag by that much. Every 2 s costs the
        # server one call per running activity per 2 s.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        # `vecmigrate doctor` reads the versions of the workers polling a queue from here.
        identity=f"{os.getpid()}@{socket.gethostname()} vecmigrate/{version()}",
    )


async def run_worker(
    address: str | None,
    task_queue: str,
    catalog_url: str,
    *,
    concurrency: int = 4,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    region: str | None = None,
    settings: TemporalSettings | None = None,
    http: str | None = None,
    build_threads: int = 0,
) -> None:
    """Connect and poll until ``stop`` is set, then shut down cleanly.

    ``address`` (None: the profile's) overrides ``settings``, the connection's other options.

    With ``handle_signals`` SIGINT and SIGTERM set ``stop`` too (a worker process); without,
    they stay with the caller (a worker inside another command). With ``http`` (``host:port``)
    the worker serves ``/metrics``, ``/healthz`` and ``/readyz`` there.
    """
    # A worker may start before its server is up (a compose file, a demo): wait a minute for it.
    client = await connect(address, wait_seconds=60, settings=settings)
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    health = _Health()
    async with contextlib.AsyncExitStack() as stack:
        if http:
            probes = ProbeServer(
                *parse_address(http), current().registry, live=health.live, ready=health.ready
            ).start()
            stack.callback(probes.stop)
        exporter = sdk_metrics()
        if exporter is not None:
            await stack.enter_async_context(exporter)
        ticking = asyncio.ensure_future(health.tick())
        stack.callback(ticking.cancel)
        await _poll(
            client, task_queue, catalog_url, concurrency, region, stop, health, build_threads
        )


class _Health:
    """Liveness (the event loop turns) and readiness (polling, not shutting down)."""

    STALE = 30.0

    def __init__(self) -> None:
        self.polling = False
        self.beat = time.monotonic()

    async def tick(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(1.0)

    def live(self) -> tuple[bool, str]:
        late = time.monotonic() - self.beat
        if late > self.STALE:
            return False, f"event loop stuck for {late:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return (True, "polling") if self.polling else (False, "not polling")


async def _poll(
    client: Client,
    task_queue: str,
    catalog_url: str,
    concurrency: int,
    region: str | None,
    stop: asyncio.Event,
    health: _Health,
    build_threads: int = 0,
) -> None:
    with ThreadPoolExecutor(max_workers=concurrency + 2) as executor:
        worker = build_worker(
            client,
            task_queue,
            catalog_url,
            executor,
            max_concurrent_activities=concurrency,
            build_threads=build_threads,
            region=region,
        )
        async with worker:
            health.polling = True
            log = logging.getLogger("vecmigrate.worker")
            log.info(
                "worker polling %s on %s (namespace %s, region %s)",
                task_queue,
                client.service_client.config.target_host,
                client.namespace,
                region or "none",
            )
            if (kernel := blas.described()) is not None:
                log.info("OpenBLAS kernel %s", kernel)
            if environment_keyring() is None:
                log.warning(
                    "no key ring (VECMIGRATE_KEYRING): payloads in Temporal, index artifacts "
                    "and ledger entries are not encrypted or keyed"
                )
            try:
                await stop.wait()
            finally:
                health.polling = False


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m vecmigrate.workers.main``."""
    p = argparse.ArgumentParser(description="vecmigrate worker")
    p.add_argument("--address", default=None, help="default: the envconfig profile")
    p.add_argument(
        "--region",
        default=None,
        help="run only this region's work (task queue default: vecmigrate-REGION)",
    )
    p.add_argument("--task-queue", default=None)
    p.add_argument("--catalog", default=default_catalog_url())
    p.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("VECMIGRATE_CONCURRENCY", "4"))
    )
    p.add_argument("--build-threads", type=int, default=build_threads_default(), help=THREADS_HELP)
    p.add_argument("--http", default=None, help=HTTP_HELP)
    p.add_argument("--log-format", choices=["text", "json"], default=None)
    args = p.parse_args(argv)
    configure_logging(args.log_format)
    crash_traces()
    http = worker_telemetry(args.http)
    queue = args.task_queue or (
        f"vecmigrate-{args.region}" if args.region else default_task_queue()
    )
    asyncio.run(
        run_worker(
            args.address,
            queue,
            args.catalog,
            concurrency=args.concurrency,
            region=args.region,
            http=http,
            build_threads=args.build_threads,
        )
    )


THREADS_HELP = (
    "threads each index build uses (default: $VECMIGRATE_BUILD_THREADS, or 0: the cores "
    "shared among the builds running at once)"
)


HTTP_ENV = "VECMIGRATE_WORKER_HTTP"
HTTP_HELP = (
    "serve /metrics, /healthz and /readyz on HOST:PORT (default: $VECMIGRATE_WORKER_HTTP, or "
    "$OTEL_EXPORTER_PROMETHEUS_HOST:$OTEL_EXPORTER_PROMETHEUS_PORT when OTEL_METRICS_EXPORTER "
    "names prometheus)"
)


def worker_telemetry(http: str | None) -> str | None:
    """Install a worker process's telemetry from the environment; returns the address its
    HTTP endpoint serves on (None: no endpoint, and no metrics unless exported elsewhere)."""
    http = http or os.environ.get(HTTP_ENV)
    exporters = os.environ.get("OTEL_METRICS_EXPORTER", "")
    if not http and "prometheus" in exporters:
        host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "localhost"
        http = f"{host}:{os.environ.get('OTEL_EXPORTER_PROMETHEUS_PORT') or 9464}"
    telemetry = configure("vecmigrate-worker", metrics_default="prometheus" if http else "none")
    install(telemetry, set_global=True)
    return http


if __name__ == "__main__":
    main()
