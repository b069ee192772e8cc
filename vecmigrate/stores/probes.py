"""Looking at a store before a migration uses it, without changing it.

``plan`` asks two things of every store a migration names: does it hold a version already (read
only: a store that does not exist yet is not created by asking), and can the target be written
(tried for real where the engine can undo it: a PostgreSQL transaction rolled back, a Milvus
collection dropped again; elsewhere the directory the engine would write in is checked). Either
way nothing is left behind.

One probe per store kind, in :data:`PROBES`; a store kind without one fails a test.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from vecmigrate.config import resolve_store, sqlite_path
from vecmigrate.errors import PreconditionError, VecmigrateError
from vecmigrate.model.records import RecordSchema
from vecmigrate.model.spec import (
    AnyStoreRef,
    BuiltinStoreRef,
    Metric,
    MilvusStoreRef,
    PgvectorStoreRef,
    QdrantStoreRef,
    VersionSpec,
    is_native,
)
from vecmigrate.stores.base import Scope

# How long a probe waits for a database to answer or a lock to free.
PROBE_TIMEOUT_SECONDS = 10


def redacted(url: str) -> str:
    """A database URL fit to print: its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return url.split("@")[-1] if "@" in url else url


def describe_store(ref: AnyStoreRef) -> str:
    """The store a reference names, in words (no secret in them)."""
    if isinstance(ref, PgvectorStoreRef):
        table = f" (table {ref.table})" if ref.table else ""
        return f"pgvector at {redacted(ref.url)}{table}"
    if isinstance(ref, MilvusStoreRef):
        named = f" (collection {ref.collection})" if ref.collection else ""
        return f"Milvus at {ref.uri}{named}"
    if isinstance(ref, QdrantStoreRef):
        named = f" (collection {ref.collection})" if ref.collection else ""
        return f"Qdrant at {ref.url or ref.path}{named}"
    return f"built-in store at {redacted(resolve_store(ref).url or '')}"


def creatable(path: Path) -> str | None:
    """Why a directory or file at ``path`` could not be written or made (None: it could).

    A missing path needs its nearest existing ancestor to be a writable directory; nothing is
    created to find out.
    """
    if path.exists():
        needed = os.W_OK | (os.X_OK if path.is_dir() else 0)
        return None if os.access(path, needed) else f"{path} is not writable by this user"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be created: {parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable by this user"
    return None


def _cause(exc: Exception) -> str:
    """The first line of what the driver said (SQLAlchemy wraps it with the statement)."""
    said = str(getattr(exc, "orig", None) or exc).strip()
    return said.splitlines()[0] if said else type(exc).__name__


@contextmanager
def _postgres(url: str) -> Iterator[Connection]:
    """A connection of its own (no pool kept, a bounded wait to connect).

    Raises:
        PreconditionError: the database cannot be reached (the URL shown without password).
    """
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT_SECONDS}
    )
    try:
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise PreconditionError(f"cannot reach {redacted(url)}: {_cause(exc)}") from None
        with conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def _rolled_back(conn: Connection) -> Iterator[Connection]:
    """A transaction that is always rolled back (PostgreSQL undoes DDL too)."""
    trans = conn.begin()
    try:
        yield conn
    finally:
        trans.rollback()


def _probe_scope() -> Scope:
    return Scope("vm-probe", f"probe-{uuid.uuid4().hex[:12]}", "probe")


# -- the built-in store ---------------------------------------------------------------------------


def _builtin_url(ref: AnyStoreRef) -> str:
    url = resolve_store(cast(BuiltinStoreRef, ref)).url
    assert url is not None  # resolve_store fills it
    return url


def _builtin_holds(ref: AnyStoreRef, scope: Scope) -> bool:
    url = _builtin_url(ref)
    query = "SELECT 1 FROM vm_namespaces WHERE tenant = :t AND collection = :c AND version = :v"
    params = {"t": scope.tenant, "c": scope.collection, "v": scope.version}
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            return False
        # Opened as it is (never created) and only read: asking must not make the store's
        # tables in someone else's file.
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=PROBE_TIMEOUT_SECONDS)
        with closing(db):
            known = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vm_namespaces'"
            ).fetchone()
            if known is None:
                return False
            sql = query.replace(":t", "?").replace(":c", "?").replace(":v", "?")
            return db.execute(sql, tuple(params.values())).fetchone() is not None
    with _postgres(url) as conn:
        if conn.execute(text("SELECT to_regclass('vm_namespaces')")).scalar() is None:
            return False
        return conn.execute(text(query), params).first() is not None


def _builtin_writable(ref: AnyStoreRef, scope: Scope, version: VersionSpec) -> str | None:
    url = _builtin_url(ref)
    path = sqlite_path(url)
    if path is None:
        from vecmigrate.stores.builtin import metadata, new_namespace

        with _postgres(url) as conn, _rolled_back(conn):
            metadata.create_all(conn)
            conn.execute(new_namespace(scope, RecordSchema.plain(version.embedding.dimension)))
        return None
    if not path.exists():
        return creatable(path)
    # The write lock taken and given back: the file is writable and not held by a writer that
    # never lets go. Nothing is written.
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=PROBE_TIMEOUT_SECONDS)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return f"{path} cannot be written: {exc}"
    finally:
        db.close()
    return None


# -- pgvector ------------------------------------------------------------------------------------


def _pgvector_holds(ref: AnyStoreRef, scope: Scope) -> bool:
    from vecmigrate.stores.pgvector import sqlalchemy_url

    pg = cast(PgvectorStoreRef, ref)
    with _postgres(sqlalchemy_url(pg.url)) as conn:
        if pg.table is not None:
            # A named table is the version (an adopted source, or a target made under it).
            return (
                conn.execute(text("SELECT to_regclass(:t)"), {"t": pg.table}).scalar() is not None
            )
        if conn.execute(text("SELECT to_regclass('vm_pgvector_namespaces')")).scalar() is None:
            return False
        row = conn.execute(
            text(
                "SELECT 1 FROM vm_pgvector_namespaces "
                "WHERE tenant = :t AND collection = :c AND version = :v"
            ),
            {"t": scope.tenant, "c": scope.collection, "v": scope.version},
        ).first()
        return row is not None


def _pgvector_writable(ref: AnyStoreRef, scope: Scope, version: VersionSpec) -> str | None:
    """What the adapter will do, in one transaction rolled back: the extension, the registry, a
    version's table with a row, and the native index with the spec's parameters."""
    from vecmigrate.stores.pgvector import _REGISTRY, index_using, sqlalchemy_url, table_ddl

    table = f"vm_probe_{uuid.uuid4().hex[:12]}"
    dim = version.embedding.dimension
    with _postgres(sqlalchemy_url(cast(PgvectorStoreRef, ref).url)) as conn, _rolled_back(conn):
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.execute(text(_REGISTRY))
        for stmt in table_ddl(table, dim):
            conn.execute(text(stmt))
        one = "[" + ",".join(["1"] * dim) + "]"
        conn.execute(
            text(f"INSERT INTO {table} (id, h, embedding) VALUES (0, 0, CAST(:v AS vector))"),
            {"v": one},
        )
        if is_native(version.index):
            metric = Metric(version.embedding.metric)
            conn.execute(
                text(f"CREATE INDEX ON {table} USING {index_using(version.index, metric, dim)}")
            )
    return None


# -- Milvus --------------------------------------------------------------------------------------


def _milvus_file(uri: str) -> Path | None:
    """The file of a milvus-lite URI (None for a server)."""
    return None if "://" in uri else Path(uri)


def _milvus_client(ref: MilvusStoreRef) -> Any:
    from vecmigrate.stores.milvus import client_for

    try:
        return client_for(ref.uri, ref.token, ref.tls)
    except Exception as exc:
        local = _milvus_file(ref.uri)
        held = (
            f" (milvus-lite serves one process at a time: another process, a worker perhaps, "
            f"may hold {local}; stop it or use a Milvus server)"
            if local is not None
            else ""
        )
        raise PreconditionError(f"cannot open Milvus at {ref.uri}: {exc}{held}") from None


def _milvus_holds(ref: AnyStoreRef, scope: Scope) -> bool:
    from vecmigrate.stores.milvus import collection_name

    milvus = cast(MilvusStoreRef, ref)
    local = _milvus_file(milvus.uri)
    if local is not None and not local.exists():
        return False
    client = _milvus_client(milvus)
    name = milvus.collection or collection_name(scope)
    return bool(client.has_collection(name, timeout=PROBE_TIMEOUT_SECONDS))


def _milvus_writable(ref: AnyStoreRef, scope: Scope, version: VersionSpec) -> str | None:
    """A collection of the version's shape made through the adapter, written, given the native
    index, then dropped."""
    from vecmigrate.stores.milvus import MilvusStore

    milvus = cast(MilvusStoreRef, ref)
    local = _milvus_file(milvus.uri)
    if local is not None and not local.exists():
        return creatable(local)
    client = _milvus_client(milvus)
    dim = version.embedding.dimension
    metric = Metric(version.embedding.metric)
    store = None
    try:
        store = MilvusStore.open(
            milvus.uri, _probe_scope(), dim, token=milvus.token, tls=milvus.tls, metric=str(metric)
        )
        store.upsert(np.zeros(1, np.int64), np.ones((1, dim), np.float32))
        if is_native(version.index):
            store.create_index(version.index, metric)
    finally:
        if store is not None:
            client.drop_collection(store.name)
    return None


# -- Qdrant --------------------------------------------------------------------------------------


def _qdrant_holds(ref: AnyStoreRef, scope: Scope) -> bool:
    from vecmigrate.stores.qdrant import client_for, collection_name

    qdrant = cast(QdrantStoreRef, ref)
    name = qdrant.collection or collection_name(scope)
    if qdrant.path is not None:
        # The local mode lists its collections in meta.json: read without taking the
        # directory's lock, which a worker may hold.
        meta = Path(qdrant.path) / "meta.json"
        if not meta.exists():
            return False
        return name in json.loads(meta.read_text()).get("collections", {})
    return bool(client_for(qdrant).collection_exists(name))


def _qdrant_writable(ref: AnyStoreRef, scope: Scope, version: VersionSpec) -> str | None:
    """A server answers for its collections (creating one is left to the migration); the
    local mode writes only under ``path``: a directory made and removed there shows it can."""
    from vecmigrate.stores.qdrant import client_for

    qdrant = cast(QdrantStoreRef, ref)
    if qdrant.path is None:
        client_for(qdrant).get_collections()
        return None
    root = Path(qdrant.path)
    if not root.exists():
        return creatable(root)
    try:
        Path(tempfile.mkdtemp(prefix=".vm-probe-", dir=root)).rmdir()
    except OSError as exc:
        return f"{root} is not writable: {exc.strerror}"
    return None


@dataclass(frozen=True)
class StoreProbe:
    """How to look at one kind of store without changing it."""

    # Whether the store holds a version's scope (read only; a missing store holds nothing).
    holds: Callable[[AnyStoreRef, Scope], bool]
    # Why the version could not be written there (None: it could); leaves nothing behind.
    writable: Callable[[AnyStoreRef, Scope, VersionSpec], str | None]


PROBES: dict[str, StoreProbe] = {
    "builtin": StoreProbe(_builtin_holds, _builtin_writable),
    "pgvector": StoreProbe(_pgvector_holds, _pgvector_writable),
    "milvus": StoreProbe(_milvus_holds, _milvus_writable),
    "qdrant": StoreProbe(_qdrant_holds, _qdrant_writable),
}


def _unreachable(ref: AnyStoreRef, exc: Exception) -> str:
    return f"cannot reach the {describe_store(ref)}: {_cause(exc)}"


def store_holds(ref: AnyStoreRef, scope: Scope) -> bool:
    """Whether the store already holds ``scope``; reads only, creates nothing.

    Raises:
        PreconditionError: the store cannot be reached (the message names it, never a secret).
    """
    try:
        return PROBES[ref.kind].holds(ref, scope)
    except VecmigrateError:
        raise
    except Exception as exc:
        raise PreconditionError(_unreachable(ref, exc)) from None


def target_problem(ref: AnyStoreRef, scope: Scope, version: VersionSpec) -> str | None:
    """Why ``version`` could not be written to ``ref`` (None: it could), found without leaving
    anything behind: the store reached, written where it can undo it, and the directory for
    vecmigrate's own index files (artifact index kinds) checked."""
    try:
        problem = PROBES[ref.kind].writable(ref, scope, version)
    except VecmigrateError as exc:
        problem = str(exc)
    except Exception as exc:
        problem = f"the {describe_store(ref)} refused a trial write of {scope}: {_cause(exc)}"
    if problem is None and not is_native(version.index):
        artifacts = resolve_store(ref).artifacts
        assert artifacts is not None  # resolve_store fills it
        problem = creatable(Path(artifacts))
    return problem
