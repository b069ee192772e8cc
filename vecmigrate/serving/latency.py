"""The router's search latencies, summed up once a second and published to the catalog.

A search appends its milliseconds to a list of the current second (the hot path's only cost:
a dictionary lookup and an append). A thread of the monitor's own, once a second, moves the
second's lists into a window of the last few seconds and publishes, for each collection
searched in the last second, the window's p50, p99 and count (one row per router and
collection, written over: see ``vecmigrate.catalog.latency``). A latency budget reads them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.latency import Latencies, LatencyReading

log = logging.getLogger(__name__)

Key = tuple[str, str]
Millis = npt.NDArray[np.float64]

# The longer window over which each router also publishes a p99: a latency budget takes it as
# the idle p99 (a 3-second window's p99 is its third-slowest search at 100 a second: in four
# drill runs one such window before a migration gave 0.5 to 1.6 times the clients' idle p99).
BASELINE_SECONDS = 30.0


class LatencyMonitor:
    """Rolling search latencies per collection, published every ``every`` seconds over the
    last ``window_seconds``."""

    def __init__(
        self,
        catalog: Catalog,
        window_seconds: float = 3.0,
        every: float = 1.0,
        start: bool = True,
        baseline_seconds: float = BASELINE_SECONDS,
    ) -> None:
        self.catalog = catalog
        self.every = every
        self.router = uuid.uuid4().hex
        # The current second's samples, appended to by searches: (tenant, collection) -> ms.
        self.samples: defaultdict[Key, list[float]] = defaultdict(list)
        # The seconds closed since, newest last: the window published (its p50, p99, count),
        # and the longer one whose p99 is published as the baseline a budget takes as idle.
        self._seconds: deque[dict[Key, Millis]] = deque(
            maxlen=max(1, round(max(window_seconds, baseline_seconds) / every))
        )
        self._recent = max(1, round(window_seconds / every))
        self._latencies: Latencies | None = None
        # Run after each tick, on the monitor's thread (the router paces its shadow reads).
        self.after_tick: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="latency-monitor", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop publishing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self, tenant: str, collection: str) -> LatencyReading | None:
        """The window's p50, p99 and count for a collection, and the longer window's p99
        (None: no searches in the window)."""
        key = (tenant, collection)
        seconds = list(self._seconds)
        recent = [s[key] for s in seconds[-self._recent :] if key in s]
        if not recent:
            return None
        values = np.concatenate(recent)
        p50, p99 = np.percentile(values, [50, 99])
        longer = np.concatenate([s[key] for s in seconds if key in s])
        return LatencyReading(
            float(p50),
            float(p99),
            int(values.size),
            time.time(),
            p99_baseline_ms=float(np.percentile(longer, 99)),
        )

    def tick(self) -> list[Key]:
        """Close the current second: move its samples into the window and publish each
        collection searched in it. Returns the collections published."""
        current, self.samples = self.samples, defaultdict(list)
        self._seconds.append({k: np.asarray(v, np.float64) for k, v in current.items() if v})
        published = []
        for key, values in current.items():
            if not values:
                continue
            reading = self.summary(*key)
            if reading is None:
                continue
            if self._latencies is None:
                self._latencies = Latencies(self.catalog)
                self._latencies.forget_silent()
            self._latencies.publish(self.router, key[0], key[1], reading)
            published.append(key)
        if self.after_tick is not None:
            self.after_tick()
        return published

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.tick()
            except Exception:  # serving never depends on the summary being written
                log.warning("could not publish search latencies", exc_info=True)
