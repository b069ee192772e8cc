"""The router's background work: plans refreshed, changes applied to the indexes it serves.

One thread per router, off the request path:

* every ``refresh_seconds`` it re-reads each collection's routing row (a new generation gets a
  new plan, built and its indexes loaded before it replaces the old one, which serves meanwhile),
  stages the change log's new entries (other routers' writes) on the indexes it serves, and
  swaps an index for a newer compaction when its overlay keeps records only a compaction folds;
  after ``preload`` (the gateway's default) it also loads the plan of a collection routed since;
* in between it applies staged changes to those indexes, a few milliseconds' worth at a time;
  searches kept out of a changing index wait at most a turn, and while some do, the applier
  pauses between turns as long as it worked.

It holds its router weakly: a router dropped without ``close`` stops its thread.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from vecmigrate.indexes.live import LiveIndex

log = logging.getLogger("vecmigrate.router")

# A turn of the applier aims at this long (the time searches of that index may wait): each
# index sizes it from its own pace for each kind of record (``LiveIndex.drain``).
TURN_SECONDS = 0.004
# The most records a turn applies, however fast they go.
MOST_PER_TURN = 4096


class Maintained(Protocol):
    """What the thread asks of its router."""

    refresh_seconds: float

    def refresh_due(self) -> float:
        """Refresh every plan whose refresh is due; the seconds until the next one is."""
        ...

    def served_indexes(self) -> list[LiveIndex]:
        """The in-memory indexes the router's plans serve from."""
        ...


class Upkeep:
    """A router's background thread (see the module's doc)."""

    def __init__(self, router: Maintained) -> None:
        self._router: Callable[[], Maintained | None] = weakref.ref(router)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="router-upkeep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after the turn it is in)."""
        self._stop.set()
        self.wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            router = self._router()
            if router is None:
                return
            # Cleared before the turn looks for work: a write staged from here on wakes the
            # wait below.
            self.wake.clear()
            try:
                # Without refreshes (``refresh_seconds=0``) only writes wake it.
                due = router.refresh_due() if router.refresh_seconds > 0 else 60.0
                busy = self._apply(router.served_indexes())
                pause = 0.0 if busy else due
            except Exception:  # the thread outlives a failed turn: requests still get served
                log.warning("router upkeep failed; retrying", exc_info=True)
                busy, pause = False, 0.5
            del router
            if busy:
                continue
            self.wake.wait(pause)

    def _apply(self, indexes: list[LiveIndex]) -> bool:
        """One turn of applying staged changes to each index that has some; whether any are
        left."""
        busy = False
        for live in indexes:
            if not live.staged:
                continue
            began = time.perf_counter()
            more = live.drain(MOST_PER_TURN, seconds=TURN_SECONDS)
            spent = time.perf_counter() - began
            busy = busy or more
            if more:
                # Searches that arrived during the turn waited for it: while some do, the
                # applier pauses as long as it worked (half the time for searches); otherwise
                # briefly, and catches up the sooner.
                waited, live.waited = live.waited, 0
                time.sleep(spent if waited else min(spent / 8, 0.001))
        return busy
