"""Activity input bytes by activity type in recorded histories.

`python -m tests.histories.payloads [HISTORY.json ...]` prints, per history, each activity
type's calls, bytes per call and total bytes of input payloads (every committed history when
none is named): what a migration writes to Temporal's history for its tasks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHistory

HERE = Path(__file__).parent


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def activity_inputs(history: WorkflowHistory) -> Iterator[tuple[str, int, Any]]:
    """``(activity type, input bytes, decoded input)`` of every activity scheduled."""
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            payloads = attrs.input.payloads
            size = sum(len(p.data) for p in payloads)
            decoded = json.loads(payloads[0].data) if payloads else None
            yield attrs.activity_type.name, size, decoded


def input_bytes(history: WorkflowHistory) -> dict[str, tuple[int, int]]:
    """Calls and total input bytes per activity type."""
    out: dict[str, tuple[int, int]] = {}
    for name, size, _ in activity_inputs(history):
        calls, total = out.get(name, (0, 0))
        out[name] = (calls + 1, total + size)
    return out


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted(HERE.glob("*.json"))
    for path in paths:
        figures = input_bytes(load(path))
        print(path.name)
        for name, (calls, total) in sorted(figures.items(), key=lambda kv: -kv[1][1]):
            print(f"  {name:20s} {calls:5d} calls {total / calls:8.0f} B/call {total:9d} B")
        calls = sum(c for c, _ in figures.values())
        print(f"  {'all':20s} {calls:5d} calls {sum(t for _, t in figures.values()):26d} B")


if __name__ == "__main__":
    main()
