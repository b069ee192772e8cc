"""Preparing a migration and copying shards from the source version to the target.

Everything here is idempotent: preparing twice registers nothing twice, and copying a shard
again (whole or from a cursor) upserts the same records by id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from vecmigrate.catalog import Catalog
from vecmigrate.errors import PreconditionError, VecmigrateError
from vecmigrate.sharding import plan_shards
from vecmigrate.spec import FaissIvfFlat, FaissIvfPq, MigrationSpec
from vecmigrate.stores import CAPABILITIES, Scope, VectorStore, open_store
from vecmigrate.stores.base import RecordChecksum
from vecmigrate.tasks import CopyShardResult, Cursor, PrepareResult, ShardRef
from vecmigrate.transforms import make_transform

# Called after every committed batch with the cursor to resume from, the running count and the
# running checksum of what was written (so a resumed copy need not re-read to checksum).
ProgressCallback = Callable[[Cursor, int, RecordChecksum], None]


def source_scope(spec: MigrationSpec) -> Scope:
    """The scope the migration reads."""
    return Scope(spec.tenant, spec.collection, spec.source.name)


def target_scope(spec: MigrationSpec) -> Scope:
    """The scope the migration writes."""
    return Scope(spec.tenant, spec.collection, spec.target.name)


def open_source(spec: MigrationSpec) -> VectorStore:
    """The source version's store (must exist)."""
    return open_store(spec.source.store, source_scope(spec))


def open_target(spec: MigrationSpec) -> VectorStore:
    """The target version's store (created on first use)."""
    emb = spec.target.embedding
    return open_store(spec.target.store, target_scope(spec), emb.dimension, str(emb.metric))


@dataclass(frozen=True)
class Check:
    """One precondition: its name, whether it holds, and what was found."""

    name: str
    passed: bool
    detail: str


def run_checks(catalog: Catalog, spec: MigrationSpec) -> list[Check]:
    """Every precondition of the migration, checked without writing anything."""
    where = f"{spec.tenant}/{spec.collection}"
    checks: list[Check] = []

    def add(name: str, ok: bool, good: str, bad: str) -> bool:
        checks.append(Check(name, ok, good if ok else bad))
        return ok

    src = catalog.find_version(spec.tenant, spec.collection, spec.source.name)
    if not add(
        "source registered",
        src is not None,
        f"{where}@{spec.source.name} is in the catalog",
        f"source version {spec.source.name!r} of {where} is not in the catalog",
    ):
        return checks
    assert src is not None
    e = src.embedding
    add(
        "source schema",
        e == spec.source.embedding,
        f"{e.model_id}@{e.model_version}, {e.dimension}d, {e.metric}",
        f"source.embedding does not match the catalog: {where}@{spec.source.name} holds "
        f"{e.model_id}@{e.model_version}, {e.dimension}d, {e.metric}; fix the spec",
    )
    routing = catalog.get_routing(spec.tenant, spec.collection)
    serving = routing.read_version if routing else None
    add(
        "source serves reads",
        serving == spec.source.name,
        f"routing reads {serving} (generation {routing.generation if routing else 0})",
        f"{where} serves reads from {serving!r}, not the source {spec.source.name!r}; "
        "migrate from the version that serves",
    )
    dst = catalog.find_version(spec.tenant, spec.collection, spec.target.name)
    if dst is None or (dst.migration_id == spec.migration_id and dst.state != "abandoned"):
        add("target version free", True, f"{spec.target.name} is new or this migration's", "")
    elif dst.migration_id != spec.migration_id:
        add(
            "target version free",
            False,
            "",
            f"target version {spec.target.name!r} of {where} already exists "
            f"(state {dst.state}, made by {dst.migration_id or 'seeding'}); "
            "choose a new target version name",
        )
    else:
        add(
            "target version free",
            False,
            "",
            f"target version {spec.target.name!r} was abandoned by a rollback; "
            "choose a new target version name",
        )
    try:
        store = open_source(spec)
    except VecmigrateError as exc:
        add("source store reachable", False, "", f"cannot open the source store: {exc}")
        return checks
    add("source store reachable", True, f"{store.count():,} records in {store.scope}", "")
    add(
        "dimension consistent",
        store.dimension == spec.source.embedding.dimension,
        f"{store.dimension}d in the store, the spec and the target",
        f"the source store holds {store.dimension}-dimensional vectors but "
        f"source.embedding.dimension is {spec.source.embedding.dimension}",
    )
    s_emb, t_emb = spec.source.embedding, spec.target.embedding
    add(
        "metric and normalisation",
        True,
        f"{s_emb.metric} -> {t_emb.metric}"
        + (", target normalised on copy" if t_emb.normalized and not s_emb.normalized else ""),
        "",
    )
    idx = spec.target.index
    sizes = [store.count(s) for s in shard_plan(spec, store)]
    smallest = min(sizes, default=0)
    need = 0
    if isinstance(idx, FaissIvfFlat):
        need = idx.nlist
    elif isinstance(idx, FaissIvfPq):
        need = max(idx.nlist, 1 << idx.nbits)
    add(
        "index fits the data",
        smallest >= need,
        f"{idx.kind}: smallest shard {smallest:,} vectors",
        f"target.index needs at least {need} vectors per shard to train, but the smallest "
        f"shard holds {smallest}: lower nlist (or nbits) or use fewer shards",
    )
    caps = [
        problem
        for side, version in (("source", spec.source), ("target", spec.target))
        for problem in CAPABILITIES[version.store.kind].problems(version, side)
    ]
    add(
        "stores can hold it",
        not caps,
        f"{spec.source.store.kind} -> {spec.target.store.kind}: dimension, metric and index "
        "within their declared limits",
        "; ".join(caps),
    )
    add(
        "tenant scope",
        True,
        f"tenant {spec.tenant!r}, collection {spec.collection!r}: every read and write of this "
        "migration is scoped to them by the store",
        "",
    )
    return checks


def check_preconditions(catalog: Catalog, spec: MigrationSpec) -> list[str]:
    """What would stop this migration, checked without writing anything. Empty means go."""
    return [c.detail for c in run_checks(catalog, spec) if not c.passed]


def shard_plan(spec: MigrationSpec, source: VectorStore) -> list[ShardRef]:
    """The shards of this migration over the source data."""
    quantiles = source.id_quantiles(spec.shards.count) if spec.shards.by == "range" else None
    return plan_shards(spec.shards, quantiles)


def prepare(catalog: Catalog, spec: MigrationSpec, operator: str) -> PrepareResult:
    """Check preconditions, then register the migration and the target version.

    Raises:
        PreconditionError: listing every problem; nothing was written.
    """
    problems = check_preconditions(catalog, spec)
    if problems:
        raise PreconditionError("; ".join(problems))
    source = open_source(spec)
    shards = shard_plan(spec, source)
    counts = {s.index: source.count(s) for s in shards}
    catalog.record_migration(spec, "PREPARING", operator)
    catalog.register_version(
        spec.tenant,
        spec.collection,
        spec.target.name,
        spec.target.embedding,
        spec.target.store.model_dump(mode="json"),
        state="building",
        migration_id=spec.migration_id,
    )
    open_target(spec)
    routing = catalog.get_routing(spec.tenant, spec.collection)
    assert routing is not None
    return PrepareResult(
        shards=shards, source_counts=counts, routing=routing, source_index=routing.read_index
    )


def copy_shard(
    spec: MigrationSpec,
    shard: ShardRef,
    start: Cursor | None,
    already_copied: int,
    on_batch: ProgressCallback,
    written: RecordChecksum | None = None,
) -> CopyShardResult:
    """Copy one shard from ``start`` to its end, one batch per transaction.

    ``on_batch`` runs after each batch is committed, so a resume cursor never points past data
    that is not in the target: a crash re-copies at most the batch in flight. ``written`` is the
    checksum of what earlier attempts copied; without it (a resume from an older heartbeat) the
    target shard is read again at the end to checksum it.
    """
    began = time.monotonic()
    source, target = open_source(spec), open_target(spec)
    _, transform = make_transform(spec.source.embedding, spec.target.embedding)
    cursor, copied, batches = start, already_copied, 0
    resumed_blind = written is None and start is not None
    acc = written or RecordChecksum()
    while True:
        batch = source.scan(shard, cursor, spec.batch_size)
        if len(batch) == 0:
            break
        vectors = transform(batch.vectors)
        target.upsert(batch.ids, vectors)
        acc.add(batch.ids, vectors)
        assert batch.next_cursor is not None
        cursor = batch.next_cursor
        copied += len(batch)
        batches += 1
        on_batch(cursor, copied, acc)
    return CopyShardResult(
        shard=shard.index,
        copied=copied,
        total=target.count(shard),
        checksum=target.checksum(shard) if resumed_blind else acc.hexdigest(),
        batches=batches,
        resumed_from=start,
        seconds=time.monotonic() - began,
    )
