"""Vector store adapters behind one protocol, opened from a spec's store reference."""

from __future__ import annotations

from vecmigrate.catalog.engines import DatabaseAccess
from vecmigrate.config import resolve_store
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    MilvusStoreRef,
    PgvectorStoreRef,
    QdrantStoreRef,
)
from vecmigrate.stores.base import WHOLE, Batch, Scope, VectorStore
from vecmigrate.stores.builtin import BuiltinStore
from vecmigrate.stores.capabilities import CAPABILITIES, Capabilities
from vecmigrate.stores.milvus import MilvusStore
from vecmigrate.stores.pgvector import PgvectorStore
from vecmigrate.stores.qdrant import QdrantStore
from vecmigrate.telemetry.stores import instrumented

__all__ = [
    "CAPABILITIES",
    "WHOLE",
    "Batch",
    "BuiltinStore",
    "Capabilities",
    "MilvusStore",
    "PgvectorStore",
    "QdrantStore",
    "Scope",
    "VectorStore",
    "database_access",
    "open_store",
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
    ref: AnyStoreRef, scope: Scope, dimension: int | None = None, metric: str = "l2"
) -> VectorStore:
    """Open ``scope`` in the store ``ref`` names; create it when ``dimension`` is given.

    ``metric`` matters only to stores that fix it at creation (Qdrant).
    """
    if isinstance(ref, PgvectorStoreRef):
        return PgvectorStore.open(ref.url, scope, dimension, database_access(ref))
    if isinstance(ref, QdrantStoreRef):
        return QdrantStore.open(ref.path, scope, dimension, metric=metric)
    if isinstance(ref, MilvusStoreRef):
        return MilvusStore.open(ref.uri, scope, dimension, token=ref.token, tls=ref.tls)
    resolved = resolve_store(ref)
    assert resolved.url is not None
    return BuiltinStore.open(resolved.url, scope, dimension, database_access(resolved))
