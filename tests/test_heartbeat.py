"""A long activity's heartbeats: its latest details repeated while it runs, by one thread of
the worker for every activity running at once, and none once it has ended."""

from __future__ import annotations

import threading
import time
from typing import Any

from temporalio.testing import ActivityEnvironment

from vecmigrate.activities.heartbeat import keepalive


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "heartbeat"]


def run_activity(name: str, seen: list[tuple[str, Any]], ended: list[float]) -> None:
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: seen.append((name, details[0] if details else None))

    def body() -> None:
        with keepalive(0.02) as beat:
            time.sleep(0.1)
            beat({"cursor": 1})
            time.sleep(0.1)
            assert len(heartbeat_threads()) == 1
        ended.append(time.monotonic())

    env.run(body)


def test_each_running_activity_is_repeated_with_its_latest_details_and_stops_at_its_end() -> None:
    seen: list[tuple[str, Any]] = []
    ended: list[float] = []
    runs = [threading.Thread(target=run_activity, args=(name, seen, ended)) for name in ("a", "b")]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(ended) == 2
    count = len(seen)
    time.sleep(0.1)
    assert len(seen) == count  # nothing repeated after the blocks ended
    for name in ("a", "b"):
        mine = [details for who, details in seen if who == name]
        # Bare repeats before the first progress, then the progress and its repeats.
        first = mine.index({"cursor": 1})
        assert first >= 1
        assert all(d is None for d in mine[:first])
        assert len(mine) - first >= 2
        assert all(d == {"cursor": 1} for d in mine[first:])
    assert len(heartbeat_threads()) == 1
