"""Preparing a migration and copying shards from the source version to the target.

Everything here is idempotent: preparing twice registers nothing twice, and copying a shard
again (whole or from a cursor) upserts the same records by id.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vecmigrate.catalog import Catalog
from vecmigrate.errors import PreconditionError
from vecmigrate.sharding import plan_shards
from vecmigrate.spec import FaissIvfFlat, FaissIvfPq, MigrationSpec
from vecmigrate.stores import BuiltinStore, Scope, open_store
from vecmigrate.tasks import CopyShardResult, Cursor, PrepareResult, ShardRef
from vecmigrate.transforms import make_transform

# Called after every committed batch with the cursor to resume from and the running count.
ProgressCallback = Callable[[Cursor, int], None]


def source_scope(spec: MigrationSpec) -> Scope:
    """The scope the migration reads."""
    return Scope(spec.tenant, spec.collection, spec.source.name)


def target_scope(spec: MigrationSpec) -> Scope:
    """The scope the migration writes."""
    return Scope(spec.tenant, spec.collection, spec.target.name)


def open_source(spec: MigrationSpec) -> BuiltinStore:
    """The source version's store (must exist)."""
    return open_store(spec.source.store, source_scope(spec))


def open_target(spec: MigrationSpec) -> BuiltinStore:
    """The target version's store (created on first use)."""
    return open_store(spec.target.store, target_scope(spec), spec.target.embedding.dimension)


def check_preconditions(catalog: Catalog, spec: MigrationSpec) -> list[str]:
    """What would stop this migration, checked without writing anything. Empty means go."""
    problems: list[str] = []
    where = f"{spec.tenant}/{spec.collection}"
    src = catalog.find_version(spec.tenant, spec.collection, spec.source.name)
    if src is None:
        return [f"source version {spec.source.name!r} of {where} is not in the catalog"]
    if src.embedding != spec.source.embedding:
        problems.append(
            f"source.embedding does not match the catalog: {where}@{spec.source.name} holds "
            f"{src.embedding.model_id}@{src.embedding.model_version}, "
            f"{src.embedding.dimension}d, {src.embedding.metric}; fix the spec"
        )
    routing = catalog.get_routing(spec.tenant, spec.collection)
    if routing is None or routing.read_version != spec.source.name:
        serving = routing.read_version if routing else None
        problems.append(
            f"{where} serves reads from {serving!r}, not the source {spec.source.name!r}; "
            "migrate from the version that serves"
        )
    dst = catalog.find_version(spec.tenant, spec.collection, spec.target.name)
    if dst is not None:
        if dst.migration_id != spec.migration_id:
            problems.append(
                f"target version {spec.target.name!r} of {where} already exists "
                f"(state {dst.state}, made by {dst.migration_id or 'seeding'}); "
                "choose a new target version name"
            )
        elif dst.state == "abandoned":
            problems.append(
                f"target version {spec.target.name!r} was abandoned by a rollback; "
                "choose a new target version name"
            )
    try:
        store = open_source(spec)
    except Exception as exc:
        problems.append(f"cannot open the source store: {exc}")
        return problems
    if store.dimension != spec.source.embedding.dimension:
        problems.append(
            f"the source store holds {store.dimension}-dimensional vectors but "
            f"source.embedding.dimension is {spec.source.embedding.dimension}"
        )
    idx = spec.target.index
    if isinstance(idx, FaissIvfFlat | FaissIvfPq):
        shards = shard_plan(spec, store)
        smallest = min((store.count(s) for s in shards), default=0)
        if smallest < idx.nlist:
            problems.append(
                f"target.index.nlist is {idx.nlist} but the smallest shard holds {smallest} "
                "vectors, too few to train it: lower nlist or use fewer shards"
            )
    return problems


def shard_plan(spec: MigrationSpec, source: BuiltinStore) -> list[ShardRef]:
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
) -> CopyShardResult:
    """Copy one shard from ``start`` to its end, one batch per transaction.

    ``on_batch`` runs after each batch is committed, so a resume cursor never points past data
    that is not in the target: a crash re-copies at most the batch in flight.
    """
    began = time.monotonic()
    source, target = open_source(spec), open_target(spec)
    _, transform = make_transform(spec.source.embedding, spec.target.embedding)
    cursor, copied, batches = start, already_copied, 0
    while True:
        batch = source.scan(shard, cursor, spec.batch_size)
        if len(batch) == 0:
            break
        target.upsert(batch.ids, transform(batch.vectors))
        assert batch.next_cursor is not None
        cursor = batch.next_cursor
        copied += len(batch)
        batches += 1
        on_batch(cursor, copied)
    return CopyShardResult(
        shard=shard.index,
        copied=copied,
        total=target.count(shard),
        checksum=target.checksum(shard),
        batches=batches,
        resumed_from=start,
        seconds=time.monotonic() - began,
    )
