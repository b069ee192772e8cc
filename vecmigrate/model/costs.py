"""What a migration costs: storage over its life (estimated by ``plan``, measured at its peak,
after it finalized and after the version it left was pruned) and the work of each shard."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vecmigrate.model.base import Model as _Model


class VersionBytes(_Model):
    """One version's storage: its records and its index, and whether the index's figure was
    measured (its files on disk) or estimated (the size model of its kind)."""

    version: str
    records: int = 0
    index: int = 0
    index_measured: bool = False
    count: int = 0

    @property
    def total(self) -> int:
        return self.records + self.index


class StorageEstimate(_Model):
    """``plan``'s storage figures: the collection before, while both versions exist, after the
    finalize (the source retained) and after the source is pruned."""

    source: VersionBytes
    target: VersionBytes
    # The target's index as float32 vectors would hold it (the same kind, no compression).
    target_index_float32: int = 0

    @property
    def before(self) -> int:
        return self.source.total

    @property
    def peak(self) -> int:
        return self.source.total + self.target.total

    @property
    def after_finalize(self) -> int:
        return self.peak

    @property
    def after_prune(self) -> int:
        return self.target.total


Stage = Literal["peak", "finalized", "pruned"]


class StorageSnapshot(_Model):
    """Storage measured at one point of a migration's life: both versions (a pruned one holds
    nothing) and the collection's change log."""

    stage: Stage
    at: str = ""
    source: VersionBytes
    target: VersionBytes
    change_log: int = 0
    change_log_entries: int = 0

    @property
    def total(self) -> int:
        return self.source.total + self.target.total + self.change_log


class ShardCost(_Model):
    """The work one shard cost: its copy and its index build."""

    shard: int
    copy_seconds: float | None = None
    copy_bytes_read: int | None = None
    copy_bytes_written: int | None = None
    build_seconds: float | None = None
    # Growth of the worker's resident memory during the build, sampled (builds that overlap in
    # one worker share it).
    build_peak_memory: int | None = None
    build_bytes_read: int | None = None
    build_bytes_written: int | None = None


class MigrationCosts(_Model):
    """What ``report`` shows of a migration's cost: the plan's storage estimate, the storage
    measured at each stage, and each shard's copy and build."""

    estimate: StorageEstimate | None = None
    snapshots: list[StorageSnapshot] = Field(default_factory=list)
    shards: list[ShardCost] = Field(default_factory=list)
