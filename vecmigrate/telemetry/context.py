"""What a thread of work is doing right now: the migration, shard and stage it works for.

Set by whoever starts the work (a worker around each activity); read by the store proxy (span
attributes, bytes per shard), by log lines and by metrics. A context variable, so it follows
the work into the activity's thread and not into unrelated ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Work:
    """One unit of work and what it has read and written so far."""

    migration_id: str | None = None
    tenant: str | None = None
    collection: str | None = None
    phase: str | None = None
    shard: int | None = None
    # What the work is: an activity's type, "search", "upsert"...
    task: str | None = None
    read_bytes: int = 0
    written_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The non-empty identifying fields, for log lines and span attributes."""
        names = ("migration_id", "tenant", "collection", "phase", "shard", "task")
        return {k: v for k in names if (v := getattr(self, k)) is not None}


_current: ContextVar[Work | None] = ContextVar("vecmigrate_work", default=None)


def current_work() -> Work | None:
    """The work this thread does now, if someone said."""
    return _current.get()


@contextmanager
def working(**fields: Any) -> Iterator[Work]:
    """Run a block as ``Work(**fields)``, inheriting the fields of the work around it."""
    outer = _current.get()
    known = Work.__dataclass_fields__
    inherited = outer.fields() if outer is not None else {}
    work = Work(
        **{**inherited, **{k: v for k, v in fields.items() if k in known and v is not None}}
    )
    token = _current.set(work)
    try:
        yield work
    finally:
        _current.reset(token)
