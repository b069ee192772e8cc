"""Heartbeats for a long activity: progress as it comes, and the latest repeated meanwhile."""

from __future__ import annotations

import contextvars
import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from temporalio import activity
from temporalio.exceptions import CancelledError


class Beat:
    """Heartbeats for a long call: progress details when there are some, and their latest
    repeated every so often (see :func:`keepalive`) so a call that makes no progress for a
    while (an index training, a slow batch, a shard rebuilt) is not taken for a dead worker."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.details: Any = None
        self.context = contextvars.copy_context()  # the activity's, so heartbeat finds it
        self.ended = False
        self._sending = threading.Lock()

    def __call__(self, details: Any) -> None:
        self.details = details
        activity.heartbeat(details)
        if activity.is_cancelled():
            # Between batches, where the resume cursor is: the call stops cleanly.
            raise CancelledError("cancelled at a heartbeat")

    def repeat(self) -> None:
        """Send the latest details again (none yet: a bare heartbeat), unless the block ended."""
        with self._sending:
            if self.ended:
                return
            if self.details is None:
                self.context.run(activity.heartbeat)
            else:
                self.context.run(activity.heartbeat, self.details)

    def end(self) -> None:
        """Stop repeating: once this returns, no repeat is sent (one under way is waited for)."""
        with self._sending:
            self.ended = True


class _Repeater:
    """One thread of the worker repeats the heartbeats of every running activity, each when it
    is due: a thread of each activity's own cost a start and a join (about 0.6 ms each, four
    activities a shard)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Beat]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, beat: Beat) -> None:
        with self._changed:
            heapq.heappush(self._due, (time.monotonic() + beat.every, next(self._order), beat))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(
                        None if not self._due else self._due[0][0] - time.monotonic()
                    )
                _, _, beat = heapq.heappop(self._due)
                if beat.ended:
                    continue
                heapq.heappush(self._due, (time.monotonic() + beat.every, next(self._order), beat))
            beat.repeat()


_REPEATER = _Repeater()


@contextmanager
def keepalive(every: float) -> Iterator[Beat]:
    """A :class:`Beat` for the block, its latest details repeated every ``every`` seconds."""
    beat = Beat(every)
    _REPEATER.add(beat)
    try:
        yield beat
    finally:
        beat.end()
