"""Helpers shared by test modules that need no fixture: a loop in a background thread for the
length of a block, a spec's version as data, telemetry that keeps its spans in memory.

Nothing here starts a server or imports pytest: a plain Python process (a script a test runs)
may import it too."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vecmigrate.telemetry.setup import Telemetry, configure


@contextmanager
def in_background(
    run: Callable[[threading.Event], object], name: str, join: float | None = None
) -> Iterator[None]:
    """``run(stop)`` in a daemon thread named ``name`` for the length of the block; leaving it
    sets ``stop`` and waits for the thread (``join`` seconds at most, without a bound by
    default)."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(join)


class Looping(threading.Thread):
    """A daemon thread whose ``run`` loops until ``stopping`` is set; ``close`` sets it and waits
    for the thread, 10 seconds at most."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopping = threading.Event()

    def close(self) -> None:
        self.stopping.set()
        self.join(10)


def version_data(name: str, kind: str, dimension: int = 8, **fields: Any) -> dict[str, Any]:
    """A spec's version ``name`` as data: ``fields`` (its store, say), an embedding of model
    ``m`` in ``dimension`` dimensions and an index of ``kind``."""
    return {
        "name": name,
        **fields,
        "embedding": {"model_id": "m", "dimension": dimension},
        "index": {"kind": kind},
    }


def memory_telemetry(service: str) -> tuple[Telemetry, InMemorySpanExporter]:
    """Telemetry of ``service`` (not installed) that keeps every span in memory and serves
    metrics for Prometheus, and the exporter that holds its spans."""
    spans = InMemorySpanExporter()
    telemetry = configure(
        service,
        metrics_default="prometheus",
        environ={},
        span_processors=[SimpleSpanProcessor(spans)],
    )
    return telemetry, spans
