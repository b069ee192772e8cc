"""What a version takes up in its store, and removing it when it is pruned.

Where the engine can say (PostgreSQL's relation sizes, a Qdrant shard's directory) the bytes are
measured; elsewhere they are counted from the records (count x row size). Removing a version
drops its table, collection, namespace or shard directory; it is called only for a version that
retention or ``gc`` found nothing still needs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from vecmigrate.catalog.engines import engine_for
from vecmigrate.config import resolve_store
from vecmigrate.errors import NotFoundError
from vecmigrate.indexes.sizes import record_bytes
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    MilvusStoreRef,
    PgvectorStoreRef,
    QdrantStoreRef,
)
from vecmigrate.stores.base import Scope
from vecmigrate.stores.builtin import drop_namespace
from vecmigrate.stores.pgvector import sqlalchemy_url


@dataclass(frozen=True)
class Footprint:
    """A version's bytes in its store: records, and the engine's own indexes over them."""

    records: int
    native_index: int = 0
    measured: bool = False
    count: int = 0


def footprint(ref: AnyStoreRef, scope: Scope, dimension: int) -> Footprint:
    """The bytes ``scope`` takes up in ``ref`` (zero when it is not there)."""
    from vecmigrate.stores import open_store

    try:
        store = open_store(ref, scope)
    except NotFoundError:
        return Footprint(records=0)
    count = store.count()
    if isinstance(ref, PgvectorStoreRef):
        table = getattr(store, "table", None)
        with engine_for(sqlalchemy_url(ref.url)).connect() as conn:
            row = conn.execute(
                text("SELECT pg_table_size(:t), pg_indexes_size(:t)"), {"t": table}
            ).first()
        if row is not None:
            return Footprint(int(row[0]), int(row[1]), measured=True, count=count)
    if isinstance(ref, QdrantStoreRef):
        path = getattr(store, "path", None)
        if isinstance(path, Path) and path.is_dir():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            return Footprint(size, 0, measured=True, count=count)
    return Footprint(record_bytes(count, dimension), count=count)


def drop_version(ref: AnyStoreRef, scope: Scope) -> bool:
    """Remove every record of ``scope`` (and the engine's indexes over them) from ``ref``;
    whether there was anything to remove."""
    if isinstance(ref, BuiltinStoreRef):
        resolved = resolve_store(ref)
        assert resolved.url is not None
        return drop_namespace(resolved.url, scope) > 0
    if isinstance(ref, PgvectorStoreRef):
        return _drop_pgvector(ref.url, scope)
    if isinstance(ref, MilvusStoreRef):
        from vecmigrate.stores.milvus import client_for, collection_name

        client = client_for(ref.uri, ref.token)
        name = collection_name(scope)
        if not client.has_collection(name):
            return False
        client.drop_collection(name)
        return True
    from vecmigrate.stores.qdrant import release_shard

    path = release_shard(ref.path, scope)
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


def _drop_pgvector(url: str, scope: Scope) -> bool:
    engine = engine_for(sqlalchemy_url(url))
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
