"""What versions take up: estimated before a migration (``plan``), measured as it goes (its
peak, after the finalize, after pruning), and removing a version when it is pruned.

Where the engine can say (PostgreSQL's relation sizes, a Qdrant shard's directory, index
artifacts on disk) the bytes are measured; elsewhere they are counted from the records (count x
row size) or the size model of the index kind. Removing a version drops its table, collection,
namespace or shard directory; it is called only for a version that retention or ``gc`` found
nothing still needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from vecmigrate.catalog.catalog import Catalog, VersionRecord
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.engines import engine_for
from vecmigrate.config import resolve_store
from vecmigrate.errors import NotFoundError, VecmigrateError
from vecmigrate.indexes.sizes import (
    artifact_bytes,
    index_bytes,
    index_spec,
    record_bytes,
    tree_bytes,
    uncompressed,
)
from vecmigrate.model.costs import Stage, StorageEstimate, StorageSnapshot, VersionBytes
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    MigrationSpec,
    MilvusStoreRef,
    PgvectorStoreRef,
    QdrantStoreRef,
    store_ref,
)
from vecmigrate.stores import database_access
from vecmigrate.stores.base import Scope
from vecmigrate.stores.builtin import BuiltinStore, drop_namespace, other_readers
from vecmigrate.stores.pgvector import sqlalchemy_url

# Ledger kinds: the plan's estimate recorded when a migration prepares, and each measurement.
ESTIMATE_KIND = "storage.estimate"
STORAGE_KIND = "storage"


@dataclass(frozen=True)
class Footprint:
    """A version's bytes in its store: records, and the engine's own indexes over them."""

    records: int
    native_index: int = 0
    measured: bool = False
    count: int = 0


def footprint(ref: AnyStoreRef, scope: Scope, dimension: int) -> Footprint:
    """The bytes ``scope`` takes up in ``ref`` (zero when it is not there): its records'
    count none while another version reads them too (``records: shared``; dropping it would
    free none of them)."""
    from vecmigrate.stores import open_store

    try:
        store = open_store(ref, scope)
    except NotFoundError:
        return Footprint(records=0)
    count = store.count()
    if isinstance(ref, PgvectorStoreRef):
        table = getattr(store, "table", None)
        # With the store's own credentials and TLS, as every connection to it.
        with engine_for(sqlalchemy_url(ref.url), database_access(ref)).connect() as conn:
            row = conn.execute(
                text("SELECT pg_table_size(:t), pg_indexes_size(:t)"), {"t": table}
            ).first()
        if row is not None:
            return Footprint(int(row[0]), int(row[1]), measured=True, count=count)
    if isinstance(ref, QdrantStoreRef):
        path = getattr(store, "path", None)
        if isinstance(path, Path) and path.is_dir():
            return Footprint(tree_bytes(path), 0, measured=True, count=count)
    if isinstance(store, BuiltinStore) and other_readers(store):
        return Footprint(0, count=count)
    return Footprint(record_bytes(count, dimension), count=count)


def drop_version(ref: AnyStoreRef, scope: Scope) -> bool:
    """Remove every record of ``scope`` (and the engine's indexes over them) from ``ref``;
    whether there was anything to remove."""
    if isinstance(ref, BuiltinStoreRef):
        resolved = resolve_store(ref)
        assert resolved.url is not None
        return drop_namespace(resolved.url, scope, database_access(ref)) > 0
    if isinstance(ref, PgvectorStoreRef):
        return _drop_pgvector(ref, scope)
    if isinstance(ref, MilvusStoreRef):
        from vecmigrate.stores.milvus import client_for, collection_name

        client = client_for(ref.uri, ref.token)
        name = collection_name(scope)
        if not client.has_collection(name):
            return False
        client.drop_collection(name)
        return True
    from vecmigrate.stores.qdrant import drop_version as drop_qdrant

    return drop_qdrant(ref, scope)


def _drop_pgvector(ref: PgvectorStoreRef, scope: Scope) -> bool:
    engine = engine_for(sqlalchemy_url(ref.url), database_access(ref))
    key = {"t": scope.tenant, "c": scope.collection, "v": scope.version}
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT ns FROM vm_pgvector_namespaces "
                "WHERE tenant = :t AND collection = :c AND version = :v"
            ),
            key,
        ).first()
        if row is None:
            return False
        conn.execute(text(f"DROP TABLE IF EXISTS vm_vec_{int(row[0])}"))
        conn.execute(text("DELETE FROM vm_pgvector_namespaces WHERE ns = :n"), {"n": row[0]})
    return True


def version_bytes(catalog: Catalog, version: VersionRecord) -> VersionBytes:
    """A registered version's storage: records (and the engine's indexes) in its store, and its
    newest index's artifacts on disk."""
    scope = Scope(version.tenant, version.collection, version.version)
    ref = store_ref(version.store)
    if version.state == "pruned":
        return VersionBytes(version=version.version)
    try:
        foot = footprint(ref, scope, version.embedding.dimension)
    except VecmigrateError:
        return VersionBytes(version=version.version)
    indexes = catalog.indexes_of(version.tenant, version.collection, version.version)
    index, measured = foot.native_index, foot.measured and foot.native_index > 0
    if indexes:
        newest = indexes[-1]
        on_disk = artifact_bytes(newest.artifacts)
        if on_disk is not None:
            index, measured = index + on_disk, True
        elif not foot.native_index:
            spec = index_spec(newest.spec)
            parts = len(newest.artifacts)
            index = index_bytes(spec, foot.count, version.embedding.dimension, parts)
    return VersionBytes(
        version=version.version,
        records=foot.records,
        index=index,
        index_measured=measured,
        count=foot.count,
    )


def measure_storage(catalog: Catalog, spec: MigrationSpec, stage: Stage) -> StorageSnapshot:
    """Both versions of a migration and its collection's change log, now."""

    def of(name: str) -> VersionBytes:
        found = catalog.find_version(spec.tenant, spec.collection, name)
        return version_bytes(catalog, found) if found else VersionBytes(version=name)

    entries, log_bytes = ChangeLog(catalog).size(spec.tenant, spec.collection)
    return StorageSnapshot(
        stage=stage,
        at=datetime.now(UTC).isoformat(),
        source=of(spec.source.name),
        target=of(spec.target.name),
        change_log=log_bytes,
        change_log_entries=entries,
    )


def record_storage(
    catalog: Catalog, spec: MigrationSpec, stage: Stage, actor: str = "vecmigrate"
) -> StorageSnapshot:
    """Measure and keep a migration's storage at ``stage`` in its ledger (once per stage)."""
    snapshot = measure_storage(catalog, spec, stage)
    entry = catalog.append(
        tenant=spec.tenant,
        collection=spec.collection,
        kind=STORAGE_KIND,
        actor=actor,
        migration_id=spec.migration_id,
        data=snapshot.model_dump(mode="json"),
        event_key=f"{spec.migration_id}/storage/{stage}",
        region=spec.region,
    )
    return StorageSnapshot.model_validate(entry.data)


def storage_estimate(catalog: Catalog, spec: MigrationSpec, total: int) -> StorageEstimate:
    """Bytes of the source (its index measured on disk where its artifacts are found) and of the
    target (no records of its own with ``records: shared``), from the size model of each index
    kind; beside them, the target's index as float32."""
    src_dim, dim = spec.source.embedding.dimension, spec.target.embedding.dimension
    parts = len(spec.shards.selected())
    source_index, measured = index_bytes(spec.source.index, total, src_dim, parts), False
    routing = catalog.get_routing(spec.tenant, spec.collection)
    if routing is not None and routing.read_index and routing.read_version == spec.source.name:
        try:
            found = artifact_bytes(catalog.get_index(routing.read_index).artifacts)
        except VecmigrateError:
            found = None
        if found is not None:
            source_index, measured = found, True
    return StorageEstimate(
        source=VersionBytes(
            version=spec.source.name,
            records=record_bytes(total, src_dim),
            index=source_index,
            index_measured=measured,
            count=total,
        ),
        target=VersionBytes(
            version=spec.target.name,
            records=0 if spec.records == "shared" else record_bytes(total, dim),
            index=index_bytes(spec.target.index, total, dim, parts),
            count=total,
        ),
        target_index_float32=index_bytes(uncompressed(spec.target.index), total, dim, parts),
    )
