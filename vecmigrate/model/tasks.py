"""Inputs and outputs of the data-plane tasks, one model each.

They cross Temporal payloads, so they carry ids, ranges, URIs, counts and checksums, never
vectors or index bytes, and never the spec: a task names its migration and the hash of its
spec, and the activity loads the spec from its catalog (stored there once, by the migration's
first ledger entry). Every field added later must have a default, so running workflows keep
decoding them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vecmigrate.model.base import Model as _Model
from vecmigrate.model.gates import GateReport, ShadowFigures, ShardCheck
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import MigrationSpec, ShardLayout

HASH_SPACE = 1 << 32

# The region whose data a task touches (None outside a regional migration): only a worker of that
# region may run it (see :mod:`vecmigrate.catalog.residency`).
TaskRegion = str | None


class ShardRef(_Model):
    """One shard: a half-open range ``[lo, hi)`` of a key.

    The key is the 32-bit hash of the id for ``by="hash"`` and the id itself for ``by="range"``,
    so every shard is a contiguous range of an index and scans in a stable order.
    """

    index: int
    by: Literal["hash", "range"]
    lo: int
    hi: int


def hash_shards(count: int) -> list[ShardRef]:
    """``count`` equal ranges of the 32-bit hash space (pure arithmetic: the workflow recomputes
    them instead of carrying thousands of them across runs)."""
    bounds = [i * HASH_SPACE // count for i in range(count + 1)]
    return [ShardRef(index=i, by="hash", lo=bounds[i], hi=bounds[i + 1]) for i in range(count)]


def selected_hash_shards(layout: ShardLayout) -> list[ShardRef]:
    """The hash shards a layout selects, in order."""
    wanted = set(layout.selected())
    return [s for s in hash_shards(layout.count) if s.index in wanted]


class Cursor(_Model):
    """Resume point of a shard scan: the last (key, id) read. Heartbeated after every batch.

    ``id`` is the last record's label (its id, for integer ids); ``token`` is where a scan
    that is not ordered by label resumes: the last id of a string or UUID keyset, or the
    engine's own next-page position.
    """

    key: int
    id: int
    token: str | None = None


class SpecTask(_Model):
    """What every task of a migration names: the migration, the hash of its spec (the activity
    loads the spec by it and refuses one whose hash differs), and whose data it touches (the
    tenant, and the region whose workers alone may run it)."""

    migration_id: str
    spec_hash: str
    tenant: str
    region: TaskRegion = None

    @model_validator(mode="before")
    @classmethod
    def _from_spec(cls, data: Any) -> Any:
        """A task scheduled by an earlier release carries its whole spec: name it by hash."""
        if isinstance(data, dict) and "spec" in data and "spec_hash" not in data:
            data = dict(data)
            spec = MigrationSpec.model_validate(data.pop("spec"))
            data.update(spec_hash=spec.spec_hash(), tenant=spec.tenant, region=spec.region)
        return data


class PrepareInput(SpecTask):
    operator: str = "unknown"


class Promotion(_Model):
    """A retained version moved back into service without a copy: its index, reused, and the
    change-log position after which it missed writes (replayed instead of copied)."""

    version: str
    index_id: str
    written_until: int


class PrepareResult(_Model):
    shards: list[ShardRef]
    source_counts: dict[int, int]
    routing: RoutingView
    source_index: str | None = None
    # The transitional adapter fit for a re-embedding migration, if the spec asked for one.
    adapter: str | None = None
    # The target is a retained version promoted back (no copy, no build).
    promotion: Promotion | None = None


class LedgerAck(_Model):
    """Where an entry landed in the ledger: the workflow keeps the last one as an anchor."""

    seq: int
    hash: str


class CopyShardInput(SpecTask):
    shard: ShardRef


class CopyShardResult(_Model):
    shard: int
    copied: int
    total: int
    checksum: str
    batches: int = 0
    resumed_from: Cursor | None = None
    seconds: float = 0.0
    # False when a pause stopped the copy between batches; the next call resumes it.
    complete: bool = True
    # Attempts at this shard so far, and vectors handed to the target more than once.
    attempts: int = 1
    recopied: int = 0
    # Re-embedding migrations: texts embedded by the new model, and the seconds it took.
    embedded: int = 0
    embed_seconds: float = 0.0
    ledger: LedgerAck | None = None
    # Source records of this shard left out (see the quarantine), over this call's batches.
    quarantined: int = 0
    # Bytes of records read from the source and written to the target by this call.
    bytes_read: int = 0
    bytes_written: int = 0


class BuildIndexInput(SpecTask):
    shard: ShardRef


class BuildNativeIndexInput(SpecTask):
    """The target database builds its own index over the whole version (no shards)."""


class ArtifactRef(_Model):
    """A shard's index artifact on disk: content-addressed file plus its checksum."""

    shard: int
    uri: str
    sha256: str
    count: int
    kind: str
    reused: bool = False
    seconds: float = 0.0
    # What the build cost: bytes of records read from the store, bytes of index written, and
    # the growth of the worker's resident memory while it ran (sampled; None where unknown).
    bytes_read: int = 0
    bytes_written: int = 0
    peak_memory: int | None = None
    # The key ring key that wraps the artifact's data key (None: written in plaintext).
    protected_by: str | None = None


class RegisterIndexInput(SpecTask):
    """Register the target index; with no ``artifacts``, those the shard journal holds for
    every selected shard (a migration of thousands of shards does not pass them around).
    ``log_position``: the change-log head read before the index's data was, so readers know
    which writes the index lacks."""

    artifacts: list[ArtifactRef] = Field(default_factory=list)
    log_position: int | None = None


class ValidateShardInput(SpecTask):
    shard: ShardRef
    round: int = 0
    # Online: records written after this change-log position are left out of the profiles.
    volatile_after: int | None = None


class ValidateInput(SpecTask):
    source_index: str | None
    target_index: str
    # Profiles of the shards; with none, those of validation ``round`` in the shard journal.
    checks: list[ShardCheck] = Field(default_factory=list)
    round: int = 0


class IndexRegistered(_Model):
    """An index version recorded in the catalog."""

    index_id: str
    checksum: str
    artifacts: int


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
    candidate_version: str | None = None
    candidate_index: str | None = None
    ramp_percent: float = 0.0
    shadow_percent: float = 0.0
    writes_paused: bool = False
    region: TaskRegion = None


class VersionStateStep(_Model):
    """A version's new state, part of a :class:`RoutingStepInput`, and its ledger entry's key."""

    version: str
    state: str
    event_key: str


class RoutingStepInput(RoutingChangeInput):
    """A routing change, its ledger entry and the version states that go with it, as one task
    (one round trip to the server instead of one per write). Each write is idempotent on its
    own key (the change key, each entry's event key), so a retry completes what an attempt
    began, in the order an attempt makes them: routing, its entry, then each state and its
    entry."""

    event_key: str
    states: list[VersionStateStep] = Field(default_factory=list)


class RoutingStepResult(_Model):
    routing: RoutingView
    # Where each entry landed: the routing change's, then each state's.
    acks: list[LedgerAck]


class LedgerInput(_Model):
    """One ledger entry; ``event_key`` makes the append idempotent under retries."""

    migration_id: str
    tenant: str
    collection: str
    event_key: str
    kind: str
    actor: str
    data: dict[str, Any] = Field(default_factory=dict)
    region: TaskRegion = None
    # The identity the message's connection presented (its ``vecmigrate-caller`` header),
    # recorded beside ``actor``, the operator name the message declared.
    caller: str | None = None


class AccessPolicyInput(_Model):
    """Ask the catalog for the operator roles in force on one tenant's collection."""

    migration_id: str
    tenant: str
    collection: str
    region: TaskRegion = None


class ControlInput(_Model):
    """The live settings running copies read before every batch."""

    migration_id: str
    paused: bool
    max_vectors_per_second: float | None = None
    region: TaskRegion = None


class VersionStateInput(_Model):
    migration_id: str
    tenant: str
    collection: str
    version: str
    state: str
    operator: str
    region: TaskRegion = None


class ValidateResult(_Model):
    report: GateReport
    seconds: float = 0.0


class CatchUpInput(SpecTask):
    """Replay the change log after ``after`` onto the target, for at most ``seconds``."""

    after: int
    seconds: float = 60.0


class CatchUpResult(_Model):
    position: int
    applied: int
    lag: int
    drained: bool
    seconds: float = 0.0
    # Entries up to ``position`` a later write of the same id superseded, removed once drained.
    compacted: int = 0


class CaptureInput(SpecTask):
    """Replay the writes captured from the source table onto the target, for at most
    ``seconds`` or until a batch finds every change there is; with ``remove``, stop capturing
    first and then (when ``replay``) replay what is left, and drop the capture."""

    seconds: float = 60.0
    remove: bool = False
    replay: bool = True


class CaptureResult(_Model):
    """Where the capture of the source table's writes stands after a call."""

    table: str
    # Changes captured since the capture was installed, and those not yet on the target.
    captured: int = 0
    lag: int = 0
    # Changes applied by this call: rows written to the target, ids deleted from it, and rows
    # the target cannot hold (deleted from it, counted here).
    applied: int = 0
    upserted: int = 0
    deleted: int = 0
    left_out: int = 0
    drained: bool = False
    removed: bool = False
    bytes: int = 0
    created_at: str = ""
    seconds: float = 0.0


class LogHeadInput(_Model):
    tenant: str
    migration_id: str | None = None
    collection: str
    region: TaskRegion = None


class ShadowInput(_Model):
    """Shadow figures of ``candidate`` after sample ``after`` (0: all)."""

    tenant: str
    collection: str
    candidate: str
    after: int = 0
    migration_id: str | None = None
    region: TaskRegion = None


class ShadowResult(_Model):
    figures: ShadowFigures
    last_id: int


class TenantsInput(_Model):
    """Which tenants of a region hold ``collection`` with version ``version`` registered."""

    collection: str
    version: str
    region: TaskRegion = None


class DataStateInput(SpecTask):
    """What the data of both versions look like now (see :class:`GateReport.data_state`)."""


class StorageInput(SpecTask):
    """Measure a migration's storage at ``stage`` (and, once finalized, tidy its collection's
    change log and artifacts first)."""

    stage: Literal["peak", "finalized", "pruned"]


class RetentionInput(_Model):
    """A version left behind by a migration, kept ``keep_seconds`` before it is pruned."""

    tenant: str
    collection: str
    version: str
    left_as: Literal["retired", "abandoned"]
    keep_seconds: float
    migration_id: str
    region: TaskRegion = None


class PruneInput(_Model):
    """Prune ``version`` if nothing needs it."""

    tenant: str
    collection: str
    version: str
    actor: str
    reason: str
    migration_id: str | None = None
    region: TaskRegion = None


class PruneResult(_Model):
    """What pruning did: ``pruned``, or ``kept`` with the reason."""

    action: str
    reason: str = ""
    freed_bytes: int = 0
    keep_until: str = ""


class StableNameInput(SpecTask):
    """Point the spec's ``cutover.stable_name`` at one of its versions (``create``: make the
    name when it does not exist yet; else leave an absent name absent)."""

    side: Literal["source", "target"]
    operator: str
    create: bool = True


class StableNameSwitch(_Model):
    """Where a stable name pointed before a switch and where it points after it (the table or
    collection names in the engine; None: the name did not exist)."""

    name: str
    kind: str  # "alias" (Qdrant, Milvus) or "view" (PostgreSQL)
    before: str | None = None
    after: str | None = None
    changed: bool = False


class ReconcileShardInput(SpecTask):
    """Compare one shard of the source and the target record by record, repair what differs,
    and compare it again."""

    shard: ShardRef
    repair: bool = True
    # Records read per second on this shard (None: as fast as the stores go).
    max_records_per_second: float | None = None
    # Whether the copy's streamed figures may vouch for the shard, and the change-log position
    # after which records count as written during the migration (None: no dual-write). A
    # workflow from before these fields sends neither: every shard is read in full.
    from_stream: bool = False
    volatile_after: int | None = None
