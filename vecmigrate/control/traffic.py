"""Client threads of a traffic generator: one daemon thread per client, stopped together."""

from __future__ import annotations

import threading
from collections.abc import Callable


def start_clients(run: Callable[[int], None], count: int, name: str) -> list[threading.Thread]:
    """``count`` daemon threads running ``run(0)``, ``run(1)``... (named ``NAME-0``...),
    started."""
    threads = []
    for n in range(count):
        t = threading.Thread(target=run, args=(n,), name=f"{name}-{n}", daemon=True)
        t.start()
        threads.append(t)
    return threads


def stop_clients(stop: threading.Event, threads: list[threading.Thread], timeout: float) -> None:
    """Set ``stop`` (which the clients poll) and wait up to ``timeout`` seconds for each."""
    stop.set()
    for t in threads:
        t.join(timeout=timeout)
