"""PostgreSQL with pgvector as a source or target.

Each (tenant, collection, version) gets its own table ``vm_vec_<n>`` (id, shard key, vector),
registered in ``vm_pgvector_namespaces``, so a native index never spans versions and a handle
cannot reach outside its scope. Bulk reads and writes use binary COPY (no text parsing of
vectors); scans are keyset-paginated on (shard key, id) or id; native HNSW and IVFFlat indexes
are built by Postgres with the parameters of the spec.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from vecmigrate.catalog.engines import DatabaseAccess, engine_for, once_per_engine
from vecmigrate.errors import DataError, NotFoundError, PreconditionError
from vecmigrate.model.spec import IndexSpec, Metric, PgvectorHnsw, PgvectorIvfflat, canonical
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import Ids, Vectors, check_vectors
from vecmigrate.stores.base import (
    Batch,
    ScanningStore,
    Scope,
    check_dimension,
    increasing_bounds,
    seek_bounds,
)

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_OPS = {"l2": "vector_l2_ops", "ip": "vector_ip_ops", "cosine": "vector_cosine_ops"}
_OPERATOR = {"l2": "<->", "ip": "<#>", "cosine": "<=>"}

_REGISTRY = """
CREATE TABLE IF NOT EXISTS vm_pgvector_namespaces (
    ns serial PRIMARY KEY,
    tenant varchar(64) NOT NULL,
    collection varchar(64) NOT NULL,
    version varchar(64) NOT NULL,
    dimension integer NOT NULL,
    UNIQUE (tenant, collection, version)
)
"""


def sqlalchemy_url(url: str) -> str:
    """Accept libpq-style ``postgresql://`` URLs; SQLAlchemy needs the psycopg 3 driver named."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _row_dtype(dim: int) -> np.dtype[Any]:
    """One binary COPY tuple of (id bigint, h bigint, embedding vector(dim)), big-endian."""
    return np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("h_len", ">i4"),
            ("h", ">i8"),
            ("vec_len", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )


def encode_copy(ids: Ids, keys: Ids, vectors: Vectors) -> bytes:
    """Rows as a binary COPY stream (header, tuples, trailer)."""
    n, dim = vectors.shape
    rows = np.zeros(n, dtype=_row_dtype(dim))
    rows["fields"] = 3
    rows["id_len"] = 8
    rows["id"] = ids
    rows["h_len"] = 8
    rows["h"] = keys
    rows["vec_len"] = 4 + 4 * dim
    rows["dim"] = dim
    rows["vec"] = vectors
    return _HEADER + rows.tobytes() + _TRAILER


def decode_copy(data: bytes, dim: int) -> tuple[Ids, Ids, Vectors]:
    """Ids, shard keys and vectors from a binary COPY stream of (id, h, embedding)."""
    if not data.startswith(_SIGNATURE):
        raise DataError("pgvector returned a COPY stream without its signature")
    ext = struct.unpack(">i", data[15:19])[0]
    body = data[19 + ext : -2]
    rows = np.frombuffer(body, dtype=_row_dtype(dim))
    vectors: Vectors = rows["vec"].astype("<f4")
    return rows["id"].astype(np.int64), rows["h"].astype(np.int64), vectors


def table_ddl(table: str, dimension: int) -> list[str]:
    """The statements that create a version's table and its shard index (if absent)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, "
        f"h bigint NOT NULL, embedding vector({dimension}) NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {table}_shard ON {table} (h, id)",
    ]


def indexed_column(spec: IndexSpec, dimension: int) -> str:
    """The expression a native index of ``spec`` is built on: the column, or its cast to half
    precision (the table keeps full vectors either way)."""
    if isinstance(spec, PgvectorHnsw | PgvectorIvfflat) and spec.precision == "halfvec":
        return f"(embedding::halfvec({dimension}))"
    return "embedding"


def index_using(spec: IndexSpec, metric: Metric, dimension: int) -> str:
    """The ``USING`` clause of the native index ``spec`` on a table's ``embedding`` column of
    ``dimension``.

    Raises:
        PreconditionError: pgvector has no such index kind.
    """
    if not isinstance(spec, PgvectorHnsw | PgvectorIvfflat):
        raise PreconditionError(f"pgvector cannot build {spec.kind} natively")
    column, ops = indexed_column(spec, dimension), _OPS[str(metric)]
    if spec.precision == "halfvec":
        ops = ops.replace("vector_", "halfvec_", 1)
    if isinstance(spec, PgvectorHnsw):
        params = f"m = {spec.m}, ef_construction = {spec.ef_construction}"
        return f"hnsw ({column} {ops}) WITH ({params})"
    return f"ivfflat ({column} {ops}) WITH (lists = {spec.lists})"


class PgvectorStore(ScanningStore):
    """A :class:`~vecmigrate.stores.base.VectorStore` on PostgreSQL + pgvector."""

    kind = "pgvector"

    def __init__(self, engine: Engine, scope: Scope, ns: int, dimension: int) -> None:
        self.engine = engine
        self.scope = scope
        self.ns = ns
        self.table = f"vm_vec_{ns}"
        self.dimension = dimension

    @classmethod
    def open(
        cls,
        url: str,
        scope: Scope,
        dimension: int | None = None,
        access: DatabaseAccess | None = None,
    ) -> PgvectorStore:
        """Open the table of ``scope``; create it when ``dimension`` is given. ``access``
        carries the password reference and TLS options.

        Raises:
            PreconditionError: the database lacks the pgvector extension and cannot add it.
            NotFoundError: the scope has no table and no dimension was given.
            DataError: it exists with another dimension.
        """
        engine = engine_for(sqlalchemy_url(url), access)

        def prepare() -> None:
            try:
                with engine.begin() as conn:
                    conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                    conn.execute(text(_REGISTRY))
            except (ProgrammingError, IntegrityError) as exc:
                if "vector" in str(exc) and "extension" in str(exc):
                    raise PreconditionError(
                        f"the database at {url} has no pgvector extension and this user cannot "
                        "add it: run CREATE EXTENSION vector as its owner"
                    ) from None
                # Two workers creating the registry at once: the other one won; carry on.

        once_per_engine(engine, "pgvector-registry", prepare)
        key = {"t": scope.tenant, "c": scope.collection, "v": scope.version}
        find = text(
            "SELECT ns, dimension FROM vm_pgvector_namespaces "
            "WHERE tenant = :t AND collection = :c AND version = :v"
        )
        with engine.connect() as conn:
            row = conn.execute(find, key).first()
        if row is None and dimension is not None:
            with contextlib.suppress(IntegrityError), engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO vm_pgvector_namespaces (tenant, collection, version, "
                        "dimension) VALUES (:t, :c, :v, :d)"
                    ),
                    {**key, "d": dimension},
                )
            with engine.connect() as conn:
                row = conn.execute(find, key).first()
        if row is None:
            raise NotFoundError(f"{scope} does not exist in the pgvector database at {url}")
        ns, dim = int(row[0]), int(row[1])
        check_dimension(scope, dim, dimension)
        store = cls(engine, scope, ns, dim)
        once_per_engine(engine, store.table, store._ensure_table)
        return store

    def _ensure_table(self) -> None:
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    for stmt in table_ddl(self.table, self.dimension):
                        conn.execute(text(stmt))
                return
            except (IntegrityError, DBAPIError):
                if attempt == 2:
                    raise  # concurrent CREATE ... IF NOT EXISTS can collide; retry first

    def _copy_out(self, query: str) -> bytes:
        raw = self.engine.raw_connection()
        try:
            cur = raw.driver_connection.cursor()  # type: ignore[union-attr]
            with cur, cur.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
            raw.commit()
            return data
        finally:
            raw.close()

    @staticmethod
    def _shard_where(shard: ShardRef, cursor: Cursor | None) -> tuple[str, str]:
        """WHERE and ORDER BY of a shard's rows after ``cursor``. Every value is a Python int
        from our own models, so inlining is safe (COPY cannot take bound parameters)."""
        lo, after = seek_bounds(shard, cursor)
        column = "h" if shard.by == "hash" else "id"
        where = f"{column} >= {int(lo)} AND {column} < {int(shard.hi)}"
        if after is not None:
            where += f" AND (h, id) > ({int(after[0])}, {int(after[1])})"
        return where, "h, id" if shard.by == "hash" else "id"

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        where, order = self._shard_where(shard, cursor)
        data = self._copy_out(
            f"SELECT id, h, embedding FROM {self.table} WHERE {where} ORDER BY {order} "
            f"LIMIT {int(limit)}"
        )
        ids, keys, vectors = decode_copy(data, self.dimension)
        if ids.size == 0:
            return Batch(ids, vectors, cursor)
        key = int(keys[-1]) if shard.by == "hash" else int(ids[-1])
        return Batch(ids, vectors, Cursor(key=key, id=int(ids[-1])))

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every id of a shard in scan order, read from the shard index ``(h, id)`` (or the
        primary key, for a range shard): no vector crosses the wire or is decoded."""
        cursor: Cursor | None = None
        while True:
            where, order = self._shard_where(shard, cursor)
            raw = self.engine.raw_connection()
            try:
                with raw.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                    cur.execute(
                        f"SELECT h, id FROM {self.table} WHERE {where} ORDER BY {order} "
                        f"LIMIT {int(batch_size)}"
                    )
                    rows = cur.fetchall()
                raw.commit()
            finally:
                raw.close()
            if not rows:
                return
            yield np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            h, last = int(rows[-1][0]), int(rows[-1][1])
            cursor = Cursor(key=h if shard.by == "hash" else last, id=last)

    def upsert(self, ids: Ids, vectors: Vectors) -> int:
        ids64, vec32 = check_vectors(ids, vectors, self.dimension, self.scope)
        if ids64.size == 0:
            return 0
        payload = encode_copy(ids64, hash_key(ids64), vec32)
        raw = self.engine.raw_connection()
        try:
            with raw.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                cur.execute(
                    f"CREATE TEMP TABLE vm_stage (id bigint, h bigint, "
                    f"embedding vector({self.dimension})) ON COMMIT DROP"
                )
                with cur.copy("COPY vm_stage (id, h, embedding) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(payload)
                cur.execute(
                    f"INSERT INTO {self.table} (id, h, embedding) "
                    "SELECT id, h, embedding FROM vm_stage "
                    "ON CONFLICT (id) DO UPDATE SET h = EXCLUDED.h, embedding = EXCLUDED.embedding"
                )
            raw.commit()
        except Exception:
            raw.rollback()
            raise
        finally:
            raw.close()
        return int(ids64.size)

    def delete(self, ids: Ids) -> int:
        values = [int(i) for i in np.asarray(ids, dtype=np.int64)]
        if not values:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(
                text(f"DELETE FROM {self.table} WHERE id = ANY(:ids)"), {"ids": values}
            )
        return int(result.rowcount)

    def count(self, shard: ShardRef | None = None) -> int:
        sql = f"SELECT count(*) FROM {self.table}"
        params: dict[str, int] = {}
        if shard is not None:
            col = "h" if shard.by == "hash" else "id"
            sql += f" WHERE {col} >= :lo AND {col} < :hi"
            params = {"lo": shard.lo, "hi": shard.hi}
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql), params).scalar_one())

    def id_quantiles(self, parts: int) -> list[int]:
        sql = text(f"SELECT id FROM {self.table} ORDER BY id LIMIT 1 OFFSET :o")
        with self.engine.connect() as conn:

            def id_at(offset: int) -> int | None:
                row = conn.execute(sql, {"o": offset}).first()
                return None if row is None else int(row[0])

            return increasing_bounds(id_at, self.count(), parts)

    def fetch(self, ids: Ids) -> tuple[Ids, Vectors]:
        values = sorted({int(i) for i in np.asarray(ids, dtype=np.int64)})
        if not values:
            return np.empty(0, np.int64), np.empty((0, self.dimension), np.float32)
        listed = ",".join(str(v) for v in values)
        data = self._copy_out(
            f"SELECT id, h, embedding FROM {self.table} WHERE id IN ({listed}) ORDER BY id"
        )
        found, _, vectors = decode_copy(data, self.dimension)
        return found, vectors

    # -- native indexes ----------------------------------------------------------------------

    def index_name(self, spec: IndexSpec, metric: Metric) -> str:
        """Name of the native index built from ``spec`` (stable, so building is idempotent)."""
        # Canonical: a parameter added later, at its default, keeps the name (and the index).
        digest = hashlib.sha256(
            json.dumps([json.loads(canonical(spec)), str(metric)], sort_keys=True).encode()
        ).hexdigest()[:10]
        return f"{self.table}_{spec.kind}_{digest}"

    def _indexed(self, spec: IndexSpec) -> str:
        return indexed_column(spec, self.dimension)

    def create_index(self, spec: IndexSpec, metric: Metric) -> str:
        """Build a native HNSW or IVFFlat index (a no-op if it exists); returns its name."""
        name = self.index_name(spec, metric)
        using = index_using(spec, metric, self.dimension)
        with self.engine.begin() as conn:
            conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {self.table} USING {using}"))
        return name

    def search_native(
        self, queries: Vectors, k: int, spec: IndexSpec, metric: Metric
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """k nearest neighbours through the native index; distances follow our convention."""
        op = _OPERATOR[str(metric)]
        setting = (
            f"SET LOCAL hnsw.ef_search = {max(spec.ef_search, k)}"
            if isinstance(spec, PgvectorHnsw)
            else f"SET LOCAL ivfflat.probes = {spec.probes}"
            if isinstance(spec, PgvectorIvfflat)
            else None
        )
        d = np.full((queries.shape[0], k), np.inf, np.float32)
        i = np.full((queries.shape[0], k), -1, np.int64)
        # The query in the type the index was built on, so the planner uses the index.
        column = self._indexed(spec)
        cast = "vector"
        if isinstance(spec, PgvectorHnsw | PgvectorIvfflat) and spec.precision == "halfvec":
            cast = f"halfvec({self.dimension})"
        sql = text(
            f"SELECT id, {column} {op} CAST(:q AS {cast}) AS d FROM {self.table} "
            f"ORDER BY {column} {op} CAST(:q AS {cast}) LIMIT :k"
        )
        with self.engine.begin() as conn:
            if setting:
                conn.execute(text(setting))
            for row, q in enumerate(np.asarray(queries, np.float32)):
                literal = "[" + ",".join(repr(float(x)) for x in q) + "]"
                found = conn.execute(sql, {"q": literal, "k": k}).all()
                for col, (rid, dist) in enumerate(found):
                    i[row, col] = int(rid)
                    value = float(dist)
                    d[row, col] = (
                        value * value
                        if str(metric) == "l2"
                        else (1.0 + value if str(metric) == "ip" else value)
                    )
        return d, i
