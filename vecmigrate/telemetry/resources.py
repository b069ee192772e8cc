"""The worker process's memory, sampled while a task runs."""

from __future__ import annotations

import os
import resource
import threading
import time
from types import TracebackType
from typing import Self

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident memory of this process now (its peak so far where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Sampler:
    """One thread of the process samples its resident memory for every block open at once,
    at the shortest interval any of them asks for, and sleeps while none is open: a worker
    measures each activity and each index build, and a thread of their own each cost a start
    and a join (about 0.6 ms, several a shard)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[PeakMemory] = set()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu = 0.0  # the thread's CPU seconds so far

    def add(self, block: PeakMemory) -> None:
        with self._lock:
            self._open.add(block)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
                self._thread.start()
        self._changed.set()

    def remove(self, block: PeakMemory) -> None:
        with self._lock:
            self._open.discard(block)

    def _run(self) -> None:
        while True:
            self._changed.clear()
            with self._lock:
                every = min((b.every for b in self._open), default=None)
            # Woken early when a block opens (it may ask for a shorter interval).
            self._changed.wait(every)
            at, rss = time.time(), rss_bytes()
            # Under the lock: once ``remove`` returns, the block is observed by its owner alone.
            with self._lock:
                for block in self._open:
                    block.observe(at, rss)
            self.cpu = time.thread_time()


_SAMPLER = _Sampler()


class PeakMemory:
    """The growth of this process's resident memory while the block runs (``peak``, bytes
    over its start), sampled every ``every`` seconds and once more at its end (FAISS and
    hnswlib allocate outside Python's view, so tracemalloc would miss them). A process-wide
    figure: work running beside the block counts too, so two builds at once each see both.

    Every 0.1 s: sampled every 0.02 s, the sampling took 0.32 s of CPU over the four builds of
    a 250,000 x 128 migration (a wake-up, the GIL and a read of the process's status each
    time), CPU the raw library's build does not spend, for a figure that a build's gradual
    growth does not need at that rate."""

    def __init__(self, every: float = 0.1, keep: bool = False) -> None:
        self.every = every
        self.keep = keep
        self.start = 0
        self.peak = 0
        # With ``keep``, every sample: (time.time(), bytes over the start), so a caller can
        # split the peak by what ran when.
        self.samples: list[tuple[float, int]] = []
        # The sampling thread's CPU seconds while the block ran (shared with blocks open
        # beside it), once it has ended.
        self.cpu = 0.0
        self._cpu_before = 0.0

    def observe(self, at: float, rss: int) -> None:
        """Take one sample of the process's resident memory (``rss`` bytes at ``at``)."""
        grown = rss - self.start
        self.peak = max(self.peak, grown)
        if self.keep:
            self.samples.append((at, grown))

    def __enter__(self) -> Self:
        self.start = rss_bytes()
        self._cpu_before = _SAMPLER.cpu
        _SAMPLER.add(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _SAMPLER.remove(self)
        self.observe(time.time(), rss_bytes())
        self.cpu = _SAMPLER.cpu - self._cpu_before
