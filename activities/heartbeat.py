"""Heartbeats for a long activity: progress as it comes, and the latest repeated meanwhile."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from temporalio import activity
from temporalio.exceptions import CancelledError


class Beat:
    """Heartbeats for a long call: progress details when there are some, and a side thread that
    repeats the latest ones so a call that makes no progress for a while (an index training, a
    slow batch, a shard rebuilt) is not taken for a dead worker."""

    def __init__(self) -> None:
        self.details: Any = None

    def __call__(self, details: Any) -> None:
        self.details = details
        activity.heartbeat(details)
        if activity.is_cancelled():
            # Between batches, where the resume cursor is: the call stops cleanly.
            raise CancelledError("cancelled at a heartbeat")


@contextmanager
def keepalive(every: float) -> Iterator[Beat]:
    """A :class:`Beat` for the block, its latest details repeated every ``every`` seconds."""
    beat = Beat()
    stop = threading.Event()
    context = contextvars.copy_context()  # the activity's context, so heartbeat finds it

    def loop() -> None:
        while not stop.wait(every):
            if beat.details is None:
                context.run(activity.heartbeat)
            else:
                context.run(activity.heartbeat, beat.details)

    thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield beat
    finally:
        stop.set()
        thread.join()
