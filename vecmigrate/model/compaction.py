"""Input and output of the compaction workflow and its activity (they cross Temporal payloads:
positions, URIs and checksums, never vectors or index bytes)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from vecmigrate.model.base import Model as _Model


class CompactionRequest(_Model):
    """Fold a collection's change log into new artifacts of one of its index versions."""

    tenant: str
    collection: str
    # The index version to compact; None: the one the routing row reads from.
    index_id: str | None = None
    # Entries younger than this are left for the next compaction: a router logs a write before
    # it writes the stores, and a record laid over from its store must be there when read.
    settle_seconds: float = Field(default=5.0, ge=0)
    # Nothing is done while fewer entries than this follow the artifacts' position.
    min_entries: int = Field(default=0, ge=0)
    # Shards written (and the position reported) every so many entries: where a retry resumes.
    checkpoint_every: int = Field(default=50_000, gt=0)
    # Pace, so that a compaction beside live traffic leaves it the cores (None: no limit).
    max_entries_per_second: float | None = Field(default=None, gt=0)
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    requested_by: str = "unknown"


class CompactionProgress(_Model):
    """What the activity heartbeats: the position it compacts to, the latest checkpoint (shards
    written with the log applied up to ``checkpoint_position``), and how far it got."""

    upto: int
    applied: int = 0
    checkpoint_position: int | None = None
    checkpoint: list[dict[str, Any]] = Field(default_factory=list)


class CompactionResult(_Model):
    """What a compaction did."""

    index_id: str
    # The log position of the artifacts it started from, and of those it recorded.
    started_at: int
    position: int
    applied: int = 0
    # Why nothing was done, when nothing was.
    skipped: str | None = None
    # The checkpoint's position a retry resumed from, and the attempt that finished.
    resumed_from: int | None = None
    attempt: int = 1
    checkpoints: int = 0
    # Records the overlay kept (their vectors read from the store) now in the new artifacts.
    kept_folded: int = 0
    artifacts: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float = 0.0
