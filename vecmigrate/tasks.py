"""Inputs and outputs of the data-plane tasks, one model each.

They cross Temporal payloads, so they carry ids, ranges, URIs, counts and checksums, never
vectors or index bytes. Every field added later must have a default, so running workflows keep
decoding them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vecmigrate.lifecycle import GateReport, RoutingView, ShardCheck
from vecmigrate.spec import MigrationSpec

HASH_SPACE = 1 << 32


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardRef(_Model):
    """One shard: a half-open range ``[lo, hi)`` of a key.

    The key is the 32-bit hash of the id for ``by="hash"`` and the id itself for ``by="range"``,
    so every shard is a contiguous range of an index and scans in a stable order.
    """

    index: int
    by: Literal["hash", "range"]
    lo: int
    hi: int


class Cursor(_Model):
    """Resume point of a shard scan: the last (key, id) read. Heartbeated after every batch."""

    key: int
    id: int


class PrepareInput(_Model):
    migration_id: str
    spec: MigrationSpec
    operator: str = "unknown"


class PrepareResult(_Model):
    shards: list[ShardRef]
    source_counts: dict[int, int]
    routing: RoutingView
    source_index: str | None = None


class CopyShardInput(_Model):
    migration_id: str
    spec: MigrationSpec
    shard: ShardRef


class CopyShardResult(_Model):
    shard: int
    copied: int
    total: int
    checksum: str
    batches: int = 0
    resumed_from: Cursor | None = None
    seconds: float = 0.0


class BuildIndexInput(_Model):
    migration_id: str
    spec: MigrationSpec
    shard: ShardRef


class BuildNativeIndexInput(_Model):
    """The target database builds its own index over the whole version (no shards)."""

    migration_id: str
    spec: MigrationSpec


class ArtifactRef(_Model):
    """A shard's index artifact on disk: content-addressed file plus its checksum."""

    shard: int
    uri: str
    sha256: str
    count: int
    kind: str
    reused: bool = False
    seconds: float = 0.0


class RegisterIndexInput(_Model):
    migration_id: str
    spec: MigrationSpec
    artifacts: list[ArtifactRef]


class ValidateShardInput(_Model):
    migration_id: str
    spec: MigrationSpec
    shard: ShardRef


class ValidateInput(_Model):
    migration_id: str
    spec: MigrationSpec
    shards: list[ShardRef]
    source_index: str | None
    target_index: str
    checks: list[ShardCheck] = Field(default_factory=list)


class IndexRegistered(_Model):
    """An index version recorded in the catalog."""

    index_id: str
    checksum: str
    artifacts: int


class LedgerAck(_Model):
    """Where an entry landed in the ledger: the workflow keeps the last one as an anchor."""

    seq: int
    hash: str


class RoutingChangeInput(_Model):
    """A compare-and-set on a collection's routing row.

    ``change_key`` makes the change idempotent: a retry of an applied change returns the row.
    """

    migration_id: str
    tenant: str
    collection: str
    expected_generation: int
    read_version: str | None
    read_index: str | None
    write_versions: list[str]
    operator: str
    reason: str
    change_key: str


class LedgerInput(_Model):
    """One ledger entry; ``event_key`` makes the append idempotent under retries."""

    migration_id: str
    tenant: str
    collection: str
    event_key: str
    kind: str
    actor: str
    data: dict[str, Any] = Field(default_factory=dict)


class VersionStateInput(_Model):
    migration_id: str
    tenant: str
    collection: str
    version: str
    state: str
    operator: str


class ValidateResult(_Model):
    report: GateReport
    seconds: float = 0.0
