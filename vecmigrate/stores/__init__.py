"""Vector store adapters behind one protocol, opened from a spec's store reference."""

from __future__ import annotations

from vecmigrate.catalog.engines import DatabaseAccess
from vecmigrate.config import resolve_store
from vecmigrate.errors import PreconditionError
from vecmigrate.model.records import RecordSchema
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    MilvusStoreRef,
    PgvectorStoreRef,
    QdrantStoreRef,
)
from vecmigrate.records.screening import Limits
from vecmigrate.stores.base import WHOLE, Batch, Inventory, Scope, VectorStore
from vecmigrate.stores.builtin import BuiltinStore
from vecmigrate.stores.capabilities import CAPABILITIES, Capabilities
from vecmigrate.stores.milvus import MilvusStore
from vecmigrate.stores.milvus import limits_of as milvus_limits
from vecmigrate.stores.pgvector import PgvectorStore
from vecmigrate.stores.pgvector import limits_of as pgvector_limits
from vecmigrate.stores.qdrant import QdrantStore
from vecmigrate.stores.qdrant import limits_of as qdrant_limits
from vecmigrate.telemetry.stores import instrumented

__all__ = [
    "CAPABILITIES",
    "WHOLE",
    "Batch",
    "BuiltinStore",
    "Capabilities",
    "Inventory",
    "MilvusStore",
    "PgvectorStore",
    "QdrantStore",
    "Scope",
    "VectorStore",
    "database_access",
    "limits_for",
    "open_store",
    "records_at",
    "share_store",
]


def database_access(ref: BuiltinStoreRef | PgvectorStoreRef) -> DatabaseAccess | None:
    """The password reference and TLS options of a store on PostgreSQL, as the engine takes
    them (None when the reference sets neither)."""
    if ref.password is None and ref.tls is None:
        return None
    tls = ref.tls
    return DatabaseAccess(
        password=ref.password,
        sslmode=tls.sslmode if tls else None,
        sslrootcert=tls.root_cert if tls else None,
        sslcert=tls.client_cert if tls else None,
        sslkey=tls.client_key if tls else None,
        sslnegotiation="direct" if tls and tls.negotiation == "direct" else None,
    )


@instrumented
def open_store(
    ref: AnyStoreRef,
    scope: Scope,
    dimension: int | None = None,
    metric: str = "l2",
    *,
    schema: RecordSchema | None = None,
) -> VectorStore:
    """Open ``scope`` in the store ``ref`` names; create it when ``dimension`` or ``schema``
    is given (records of ``schema``, or integer ids and one vector of ``dimension``).

    A reference naming a table or collection opens that one: an existing one vecmigrate did
    not make is adopted as it is (a source), and ``schema`` creates it (a target). ``metric``
    matters only to stores that fix it at creation (Qdrant, Milvus).
    """
    if isinstance(ref, PgvectorStoreRef):
        return PgvectorStore.open(
            ref.url, scope, dimension, database_access(ref), schema=schema, ref=ref
        )
    if isinstance(ref, QdrantStoreRef):
        return QdrantStore.open(ref, scope, dimension, metric=metric, schema=schema)
    if isinstance(ref, MilvusStoreRef):
        return MilvusStore.open(ref, scope, dimension, metric=metric, schema=schema)
    resolved = resolve_store(ref)
    assert resolved.url is not None
    return BuiltinStore.open(
        resolved.url, scope, dimension, database_access(resolved), schema=schema
    )


@instrumented
def share_store(ref: AnyStoreRef, scope: Scope, records_of: Scope) -> VectorStore:
    """Open ``scope`` reading the records of ``records_of`` in the same store, made on first
    use (see :meth:`BuiltinStore.share`): the built-in store alone keeps versions that share
    records.

    Raises:
        PreconditionError: another kind of store.
    """
    if not isinstance(ref, BuiltinStoreRef):
        raise PreconditionError(
            f"a {ref.kind} store keeps each version's records apart: records: shared needs the "
            "built-in store; use records: copy"
        )
    resolved = resolve_store(ref)
    assert resolved.url is not None
    return BuiltinStore.share(resolved.url, scope, records_of, database_access(resolved))


def records_at(store: VectorStore) -> str | None:
    """Where ``store``'s records are, for a store whose versions can share them (None: its
    records are its own): two handles with the same value hold the same records."""
    return store.records_at if isinstance(store, BuiltinStore) else None


def limits_for(kind: str, schema: RecordSchema) -> Limits:
    """What a store of ``kind`` made for records of ``schema`` cannot hold (the built-in store
    holds everything), known before it exists."""
    if kind == "pgvector":
        return pgvector_limits(schema)
    if kind == "qdrant":
        return qdrant_limits(schema)
    if kind == "milvus":
        return milvus_limits(schema)
    return Limits()
