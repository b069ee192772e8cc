"""PostgreSQL with pgvector as a source or target.

Three kinds of table, behind one adapter:

* vecmigrate's own table per (tenant, collection, version), ``vm_vec_<n>`` (registered in
  ``vm_pgvector_namespaces``), for a store reference without ``table``. Records of integer ids
  and one float32 vector keep the layout ``(id, h, embedding)``, read and written with binary
  COPY through numpy (no text parsing of vectors, no Python object per value);
* a table vecmigrate creates under the name a target's ``table`` gives, shaped like the
  source's records: the id column, one ``vector``/``halfvec`` column per vector, one column per
  payload field (the source's own type where the source is PostgreSQL), the extra object as
  ``jsonb``, and the shard key ``_vm_h`` beside them. Its comment holds the record schema and
  the scope, so a handle never opens another version's table;
* an existing table a source's ``table`` names, read where it is through a column mapping. It
  keeps no shard key: a hash shard is read in id order and the rows of the shard kept. Nothing
  is written to it unless the reference says ``writable: true``.

Scans are keyset-paginated; rows cross in PostgreSQL's binary format (vectors, UUIDs,
timestamps and JSON as raw bytes, decoded for a whole batch at once); writes go through binary
COPY into a staging table and one ``INSERT ... ON CONFLICT`` per batch. Native HNSW and IVFFlat
indexes are built by Postgres with the parameters of the spec, ``CONCURRENTLY`` (writes to the
table go on during the build, whose progress is read as it runs), and payload indexes (btree, or
GIN for JSON) on the fields the source indexed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError

from vecmigrate.catalog.engines import DatabaseAccess, engine_for, once_per_engine
from vecmigrate.errors import DataError, NotFoundError, PreconditionError, VecmigrateError
from vecmigrate.model.records import (
    FieldCondition,
    FieldKind,
    Filter,
    IdKind,
    PayloadField,
    RecordSchema,
    VectorField,
    fold_filter,
)
from vecmigrate.model.spec import (
    IndexSpec,
    Metric,
    PgvectorHnsw,
    PgvectorIvfflat,
    PgvectorStoreRef,
    canonical,
    memory_kb,
)
from vecmigrate.model.status import IndexBuildProgress
from vecmigrate.model.tasks import Cursor, ShardRef, StableNameSwitch
from vecmigrate.records.batch import Faults, Records, assemble
from vecmigrate.records.filters import normalize
from vecmigrate.records.ids import id_array, uuid_bytes, uuid_texts
from vecmigrate.records.payload import ARROW_TYPES, canonical_json_text
from vecmigrate.records.screening import Limits
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import Ids, Vectors, check_vectors
from vecmigrate.stores.base import (
    WHOLE,
    Batch,
    EngineSearch,
    Inventory,
    NativeHits,
    NativeQuery,
    ScanningStore,
    Scope,
    Turns,
    check_dimension,
    check_schema,
    check_scope,
    in_shard,
    increasing_bounds,
    seek_bounds,
)

log = logging.getLogger("vecmigrate.stores.pgvector")

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_OPS = {"l2": "vector_l2_ops", "ip": "vector_ip_ops", "cosine": "vector_cosine_ops"}
_OPERATOR = {"l2": "<->", "ip": "<#>", "cosine": "<=>"}
_OPCLASS_METRIC = {"l2": "l2", "ip": "ip", "cosine": "cosine"}
# Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
_PG_EPOCH = 946_684_800_000_000
KEY_COLUMN = "_vm_h"
# vecmigrate's own writes (the copy, replays, dual-writes) mark their transaction, so a change
# capture's trigger does not record them back (``vecmigrate.stores.pgcapture``): a replay onto
# one side is never captured there and replayed back.
REPLAYING = "vecmigrate.replaying"
MARK_OWN_WRITES = f"SELECT set_config('{REPLAYING}', 'on', true)"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MARKER = "vecmigrate:"

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

# How a PostgreSQL type's values cross, by type name: (payload kind, codec).
_INTS = {"int2": 2, "int4": 4, "int8": 8}
_TEXTS = {"text", "varchar", "bpchar", "name", "citext"}
_AS_TEXT = {
    "uuid", "numeric", "date", "time", "timetz", "interval", "inet", "cidr", "macaddr", "money",
    "xml",
}  # fmt: skip


def sqlalchemy_url(url: str) -> str:
    """Accept libpq-style ``postgresql://`` URLs; SQLAlchemy needs the psycopg 3 driver named."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def quote(name: str) -> str:
    """A (possibly schema-qualified) name as a quoted SQL identifier."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


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


@functools.cache
def _raw_loader() -> type:
    """psycopg's loader that gives a value's binary form as it is (decoded a whole column at a
    time). Made on first use: psycopg is the ``postgres`` extra's, and a process that never
    opens a pgvector store need not have it."""
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    class _Raw(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> bytes:
            return bytes(data)

    return _Raw


@dataclass(frozen=True)
class Column:
    """One column of a table and how its values cross."""

    name: str
    type: str  # as PostgreSQL writes it: "uuid", "vector(384)", "character varying(200)"
    typname: str  # pg_type's name: "uuid", "vector", "varchar", "_float4"
    not_null: bool = False

    @property
    def array(self) -> bool:
        return self.typname.startswith("_")


@dataclass
class Layout:
    """Where a version's records sit in a table, and how each field maps to a column."""

    table: str
    schema: RecordSchema
    id: Column
    vectors: list[Column]
    payload: list[Column]
    extra: Column | None
    key: str | None  # the shard key column; None for an adopted table
    unique_id: bool
    legacy: bool = False  # vm_vec_<n> of integer ids and one float32 vector
    adopted: bool = False
    notes: list[str] = field(default_factory=list)

    def select_list(self) -> str:
        parts = [quote(self.id.name)]
        if self.key:
            parts.append(quote(self.key))
        parts += [quote(c.name) for c in self.vectors]
        parts += [_select_expr(c) for c in self.payload]
        if self.extra is not None:
            parts.append(quote(self.extra.name))
        return ", ".join(parts)


def _select_expr(col: Column) -> str:
    if col.typname in _AS_TEXT:
        return f"{quote(col.name)}::text"
    if col.array:
        return f"to_json({quote(col.name)})::text"
    return quote(col.name)


def _kind_of(col: Column) -> FieldKind:
    """The payload kind a column's values take.

    Raises:
        PreconditionError: a type vecmigrate cannot carry.
    """
    t = col.typname
    if t in _INTS:
        return FieldKind.INT
    if t in ("float4", "float8"):
        return FieldKind.FLOAT
    if t == "bool":
        return FieldKind.BOOL
    if t in _TEXTS or t in _AS_TEXT:
        return FieldKind.TEXT
    if t in ("json", "jsonb") or col.array:
        return FieldKind.JSON
    if t in ("timestamp", "timestamptz"):
        return FieldKind.TIMESTAMP
    raise PreconditionError(
        f"column {col.name!r} has type {col.type}, which vecmigrate does not carry; list the "
        "columns to carry in payload_columns"
    )


def _sql_type(f: PayloadField) -> str:
    """The column type a target declares for a payload field."""
    if f.native and f.native.split("(")[0].strip().lower() not in ("vector", "halfvec"):
        return f.native
    return {
        FieldKind.BOOL: "boolean",
        FieldKind.INT: "bigint",
        FieldKind.FLOAT: "double precision",
        FieldKind.TEXT: "text",
        FieldKind.TIMESTAMP: "timestamp with time zone",
        FieldKind.JSON: "jsonb",
    }[f.kind]


def indexed_expression(
    column: str, typname: str, spec: IndexSpec, dimension: int
) -> tuple[str, str]:
    """What a native index of ``spec`` on a vector column is built on, and the type a query is
    cast to so the planner uses it: the column itself, or its cast to half precision where the
    spec asks for ``halfvec`` on a full-precision column (the table keeps full vectors)."""
    if typname == "halfvec":
        return quote(column), "halfvec"
    if isinstance(spec, PgvectorHnsw | PgvectorIvfflat) and spec.precision == "halfvec":
        return f"({quote(column)}::halfvec({dimension}))", f"halfvec({dimension})"
    return quote(column), "vector"


def _index_using(metric: str, column: str, typname: str, spec: IndexSpec, dimension: int) -> str:
    if not isinstance(spec, PgvectorHnsw | PgvectorIvfflat):
        raise PreconditionError(f"pgvector cannot build {spec.kind} natively")
    expr, cast = indexed_expression(column, typname, spec, dimension)
    ops = _OPS[metric]
    if cast.startswith("halfvec"):
        ops = ops.replace("vector_", "halfvec_", 1)
    if isinstance(spec, PgvectorHnsw):
        params = f"m = {spec.m}, ef_construction = {spec.ef_construction}"
        return f"hnsw ({expr} {ops}) WITH ({params})"
    return f"ivfflat ({expr} {ops}) WITH (lists = {spec.lists})"


# -- reading and writing rows ----------------------------------------------------------------


def _length_prefixed(values: list[bytes | None]) -> list[bytes]:
    return [_NULL if v is None else struct.pack(">i", len(v)) + v for v in values]


def _fixed(values: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None = None) -> list[bytes]:
    """Length-prefixed binary values of a fixed-width big-endian column, for all rows at once."""
    width = values.dtype.itemsize * (values.shape[1] if values.ndim == 2 else 1)
    rows = np.zeros(len(values), np.dtype([("len", ">i4"), ("v", values.dtype, values.shape[1:])]))
    rows["len"] = width
    rows["v"] = values
    out: list[bytes] = rows.view(f"V{4 + width}").ravel().tolist()
    if valid is not None and not valid.all():
        for i in np.flatnonzero(~valid).tolist():
            out[i] = _NULL
    return out


def _vector_values(raw: npt.NDArray[Any], dtype: str) -> list[bytes]:
    n, dim = raw.shape
    be = ">f2" if dtype == "float16" else ">f4"
    rows = np.zeros(n, np.dtype([("dim", ">i2"), ("unused", ">i2"), ("v", be, (dim,))]))
    rows["dim"] = dim
    rows["v"] = raw
    return _fixed(rows)


def _decode_vectors(values: Sequence[Any], col: Column, dimension: int) -> Any:
    """Vector column values (raw binary of ``vector``/``halfvec``, or lists of an array type)
    as a 2-D array when every row is present with the right size, else one row per record."""
    if col.array:
        return [None if v is None else np.asarray(v, np.float32) for v in values]
    be = ">f2" if col.typname == "halfvec" else ">f4"
    size = 4 + dimension * np.dtype(be).itemsize
    if all(v is not None and len(v) == size for v in values):
        rows = np.frombuffer(b"".join(values), np.dtype([("h", ">i4"), ("v", be, (dimension,))]))
        return rows["v"].astype(np.float16 if be == ">f2" else np.float32)
    out: list[Any] = []
    for v in values:
        if v is None:
            out.append(None)
        else:
            dim = struct.unpack(">h", v[:2])[0]
            out.append(np.frombuffer(v[4:], be, count=dim))
    return out


def _decode_payload(values: list[Any], col: Column, f: PayloadField) -> pa.Array:
    kind = f.kind
    if kind == FieldKind.TIMESTAMP:
        micros = [None if v is None else struct.unpack(">q", v)[0] + _PG_EPOCH for v in values]
        return pa.array(micros, pa.int64()).cast(ARROW_TYPES[kind])
    if kind == FieldKind.JSON:
        texts: list[str | None] = []
        for v in values:
            if v is None:
                texts.append(None)
            elif isinstance(v, bytes):
                texts.append(canonical_json_text(v[1:] if col.typname == "jsonb" else v))
            else:
                texts.append(canonical_json_text(v))
        return pa.array(texts, pa.string())
    if kind == FieldKind.FLOAT:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array(values, ARROW_TYPES[kind])


def _encode_payload(arr: pa.Array, col: Column, f: PayloadField) -> list[bytes]:
    """A payload column as length-prefixed binary values of the staging table's column."""
    kind = f.kind
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    t = col.typname
    if kind == FieldKind.TIMESTAMP:
        micros = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
        return _fixed((micros - _PG_EPOCH).astype(">i8"), valid)
    if kind == FieldKind.INT and t in _INTS:
        ints = np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        return _fixed(ints.astype(f">i{_INTS[t]}"), valid)
    if kind == FieldKind.FLOAT and t in ("float4", "float8"):
        floats = np.asarray(arr.fill_null(0.0).to_numpy(zero_copy_only=False), np.float64)
        return _fixed(floats.astype(">f4" if t == "float4" else ">f8"), valid)
    if kind == FieldKind.BOOL and t == "bool":
        return _fixed(np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), ">u1"), valid)
    values = arr.to_pylist()
    if t == "jsonb":
        return _length_prefixed([None if v is None else b"\x01" + v.encode() for v in values])
    return _length_prefixed([None if v is None else str(v).encode() for v in values])


def _staging_type(col: Column) -> str:
    """The staging table's type for a column: its own, or text where values cross as text."""
    if col.typname in _AS_TEXT or col.array:
        return "text"
    return col.type


def _insert_expr(col: Column) -> str:
    """How a staged value becomes the column's (a cast back from text where it crossed as
    text; a JSON array back into an array)."""
    name = quote(col.name)
    if col.typname in _AS_TEXT:
        return f"{name}::{col.type}"
    if col.array:
        element = col.type.removesuffix("[]")
        return (
            f"CASE WHEN {name} IS NULL THEN NULL ELSE COALESCE((SELECT array_agg(x::{element}) "
            f"FROM json_array_elements_text({name}::json) x), '{{}}') END"
        )
    return name


# -- filters ---------------------------------------------------------------------------------


def sql_filter(flt: Filter, layout: Layout) -> tuple[str, list[Any]]:
    """A WHERE condition (``%s`` placeholders) and its parameters for a normalised filter."""
    return fold_filter(
        flt,
        lambda cond: _sql_condition(cond, layout),
        lambda inner: (f"(({inner[0]}) IS NOT TRUE)", inner[1]),
        lambda parts: _sql_joined(" AND ", parts),
        lambda parts: _sql_joined(" OR ", parts),
    )


def _sql_joined(op: str, parts: Sequence[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    """Conditions joined by ``op`` (each in parentheses), their parameters in order."""
    return op.join(f"({sql})" for sql, _ in parts), [v for _, params in parts for v in params]


def _sql_condition(flt: FieldCondition, layout: Layout) -> tuple[str, list[Any]]:
    columns = {f.name: c for f, c in zip(layout.schema.payload, layout.payload, strict=True)}
    col = columns[flt.field]
    kind = layout.schema.field(flt.field).kind
    name = _select_expr(col)

    def value(v: Any) -> Any:
        if kind != FieldKind.TIMESTAMP:
            return v
        at = _EPOCH + timedelta(microseconds=int(v))
        return at if col.typname == "timestamptz" else at.replace(tzinfo=None)

    if flt.is_null is not None:
        return f"{name} IS {'' if flt.is_null else 'NOT '}NULL", []
    if flt.eq is not None:
        return f"{name} = %s", [value(flt.eq)]
    if flt.in_ is not None:
        return f"{name} = ANY(%s)", [[value(v) for v in flt.in_]]
    ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
    conds = [f"{name} {ops[k]} %s" for k in flt.bounds]
    return " AND ".join(conds), [value(v) for v in flt.bounds.values()]


# -- the store -------------------------------------------------------------------------------


class PgvectorStore(EngineSearch, ScanningStore):
    """A :class:`~vecmigrate.stores.base.VectorStore` on PostgreSQL + pgvector."""

    kind = "pgvector"

    def __init__(self, engine: Engine, scope: Scope, layout: Layout, writable: bool = True) -> None:
        super().__init__(scope, layout.schema)
        self.engine = engine
        self.layout = layout
        self.table = layout.table
        self.keyed = layout.key is not None
        self.writable = writable
        self._oids: dict[str, int] | None = None

    @classmethod
    def open(
        cls,
        url: str,
        scope: Scope,
        dimension: int | None = None,
        access: DatabaseAccess | None = None,
        *,
        schema: RecordSchema | None = None,
        ref: PgvectorStoreRef | None = None,
    ) -> PgvectorStore:
        """Open the table of ``scope``; create it when ``dimension`` or ``schema`` is given.
        ``access`` carries the password reference and TLS options.

        With ``ref.table``: that table; adopted as it is when it exists and was not made by
        vecmigrate (and no schema was given), created from ``schema`` when it does not exist.

        Raises:
            PreconditionError: the database lacks the pgvector extension and cannot add it; a
                named table exists and was not made by vecmigrate for this scope; an adopted
                table's mapping does not fit it.
            NotFoundError: the scope has no table and no dimension or schema was given.
            DataError: it exists with another dimension or schema.
        """
        engine = engine_for(sqlalchemy_url(url), access)
        if schema is None and dimension is not None:
            schema = RecordSchema.plain(dimension)
        if ref is not None and ref.table is not None:
            return cls._open_named(engine, scope, ref, schema, dimension)
        _prepare(engine, url)
        key = {"t": scope.tenant, "c": scope.collection, "v": scope.version}
        find = text(
            "SELECT ns, dimension FROM vm_pgvector_namespaces "
            "WHERE tenant = :t AND collection = :c AND version = :v"
        )
        with engine.connect() as conn:
            row = conn.execute(find, key).first()
        if row is None and schema is not None:
            with contextlib.suppress(IntegrityError), engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO vm_pgvector_namespaces (tenant, collection, version, "
                        "dimension) VALUES (:t, :c, :v, :d)"
                    ),
                    {**key, "d": schema.primary.dimension},
                )
            with engine.connect() as conn:
                row = conn.execute(find, key).first()
        if row is None:
            raise NotFoundError(f"{scope} does not exist in the pgvector database at {url}")
        ns, dim = int(row[0]), int(row[1])
        check_dimension(scope, dim, dimension)
        table = f"vm_vec_{ns}"
        made = _comment(engine, table)
        if made is None and (schema is None or schema.is_plain or _exists(engine, table)):
            # Integer ids and one float32 vector: the layout of every earlier release.
            layout = _legacy_layout(table, dim)
            once_per_engine(engine, table, lambda: _ensure_legacy(engine, table, dim))
        else:
            if made is None:
                assert schema is not None
                _create(engine, table, scope, schema)
                made = _comment(engine, table)
            assert made is not None
            layout = _own_layout(engine, table, made, scope)
        check_schema(scope, layout.schema, schema, dimension)
        return cls(engine, scope, layout)

    @classmethod
    def _open_named(
        cls,
        engine: Engine,
        scope: Scope,
        ref: PgvectorStoreRef,
        schema: RecordSchema | None,
        dimension: int | None,
    ) -> PgvectorStore:
        assert ref.table is not None
        table = ref.table
        if not _exists(engine, table):
            if schema is None:
                raise NotFoundError(f"table {table} does not exist in the database at {ref.url}")
            # Only a table vecmigrate makes needs the extension: an adopted one is not written
            # to, nor is its database.
            _prepare(engine, ref.url)
            _create(engine, table, scope, schema)
        existing = _comment(engine, table)
        if existing is not None:
            layout = _own_layout(engine, table, existing, scope)
            if schema is not None and dimension is None and layout.schema.shape() != schema.shape():
                raise DataError(
                    f"table {table} holds {scope} with another record schema; name a new table"
                )
            return cls(engine, scope, layout, writable=True)
        if schema is not None:
            raise PreconditionError(
                f"table {table} already exists and was not made by vecmigrate; name a new table "
                "for the target (an existing table can only be a source)"
            )
        return cls(engine, scope, _adopted_layout(engine, ref), writable=ref.writable)

    # -- the stable name --------------------------------------------------------------------

    def point_name(self, name: str, *, create: bool = True) -> StableNameSwitch:
        """Point the view ``name`` at this version's table (see :func:`point_view`)."""
        self.prepare_view_inserts()
        return point_view(self.engine, name, self.table, create=create)

    def prepare_view_inserts(self) -> None:
        """Let an application insert through a view over this table: a table vecmigrate made
        gets the trigger that computes its shard key (:mod:`vecmigrate.stores.pgshardkey`);
        an adopted table needs nothing."""
        # A table of vecmigrate's first release (integer ids) keeps its key in "h".
        key = "h" if self.layout.legacy else self.layout.key
        if key:
            from vecmigrate.stores import pgshardkey

            pgshardkey.install(
                self.engine,
                self.table,
                self.layout.id.name,
                self.layout.id.typname,
                self.schema.id_kind,
                key,
            )

    def name_points_at(self, name: str) -> str | None:
        return view_target(self.engine, name)

    def drop_name(self, name: str) -> bool:
        return drop_view(self.engine, name, self.table)

    # -- reading ----------------------------------------------------------------------------

    def _connection(self) -> Any:
        return self.engine.raw_connection()

    def _cursor(self, raw: Any) -> Any:
        """A binary cursor that hands vectors, UUIDs, timestamps and JSON over as raw bytes."""
        if self._oids is None:
            with raw.driver_connection.cursor() as cur:
                cur.execute(
                    "SELECT typname, oid::int FROM pg_type WHERE typname IN "
                    "('vector', 'halfvec', 'uuid', 'jsonb', 'json', 'timestamp', 'timestamptz')"
                )
                self._oids = {str(r[0]): int(r[1]) for r in cur.fetchall()}
        cur = raw.driver_connection.cursor(binary=True)
        for oid in self._oids.values():
            cur.adapters.register_loader(oid, _raw_loader())
        return cur

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raw = self._connection()
        try:
            with self._cursor(raw) as cur:
                cur.execute(sql, params, binary=True)
                rows = list(cur.fetchall())
            raw.commit()
        finally:
            raw.close()
        return rows

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

    def _decode(self, rows: list[tuple[Any, ...]]) -> tuple[Records, Faults]:
        """Records from rows of :meth:`Layout.select_list` (screened, see ``assemble``)."""
        layout, schema = self.layout, self.schema
        columns = list(zip(*rows, strict=True)) if rows else []
        at = 0
        id_values = list(columns[at]) if columns else []
        at += 1
        if layout.key:
            at += 1
        if schema.id_kind == IdKind.UUID:
            ids = uuid_texts(np.frombuffer(b"".join(id_values), np.uint8).reshape(-1, 16))
        elif schema.id_kind == IdKind.INT:
            ids = pa.array(id_values, pa.int64())
        else:
            ids = pa.array(id_values, pa.string())
        vectors: dict[str, Any] = {}
        for v, col in zip(schema.vectors, layout.vectors, strict=True):
            vectors[v.name] = _decode_vectors(
                list(columns[at]) if columns else [], col, v.dimension
            )
            at += 1
        payload: dict[str, pa.Array] = {}
        for f, col in zip(schema.payload, layout.payload, strict=True):
            payload[f.name] = _decode_payload(list(columns[at]) if columns else [], col, f)
            at += 1
        extra = None
        if layout.extra is not None:
            extra = _decode_payload(
                list(columns[at]) if columns else [],
                layout.extra,
                PayloadField(name="x", kind=FieldKind.JSON),
            )
        return assemble(schema, ids, vectors, payload, extra)

    def _shard_where(self, shard: ShardRef, cursor: Cursor | None) -> tuple[str, str, list[Any]]:
        """WHERE, ORDER BY and parameters of a keyed table's shard rows after ``cursor``."""
        key, idc = quote(self.layout.key or "h"), quote(self.layout.id.name)
        lo, after = seek_bounds(shard, cursor)
        if shard.by == "hash":
            where = f"{key} >= %s AND {key} < %s"
            params: list[Any] = [lo, shard.hi]
            if after is not None:
                last: Any = after[1] if cursor is None or cursor.token is None else cursor.token
                where += f" AND ({key}, {idc}) > (%s, %s{self._cast})"
                params += [after[0], last]
            return where, f"{key}, {idc}", params
        return f"{idc} >= %s AND {idc} < %s", idc, [lo, shard.hi]

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        if self.layout.legacy:
            return self._scan_legacy(shard, cursor, limit)
        if not self.keyed:
            return self._scan_adopted(shard, cursor, limit)
        where, order, params = self._shard_where(shard, cursor)
        rows = self._query(
            f"SELECT {self.layout.select_list()} FROM {quote(self.table)} WHERE {where} "
            f"ORDER BY {order} LIMIT {int(limit)}",
            params,
        )
        records, faults = self._decode(rows)
        if not rows:
            return Batch(records, cursor)
        label = int(self._labels([rows[-1][0]])[0])
        token = None if self.schema.id_kind == IdKind.INT else str(self._id_param(rows[-1][0]))
        key = int(rows[-1][1]) if shard.by == "hash" else label
        return Batch(records, Cursor(key=key, id=label, token=token), faults)

    def _scan_legacy(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        where, order = _legacy_range(shard, cursor)
        data = self._copy_out(
            f"SELECT id, h, embedding FROM {self.table} WHERE {where} ORDER BY {order} "
            f"LIMIT {int(limit)}"
        )
        ids, keys, vectors = decode_copy(data, self.dimension)
        if ids.size == 0:
            return Batch(Records.empty(self.schema), cursor)
        records, faults = assemble(self.schema, pa.array(ids), {self.schema.primary.name: vectors})
        key = int(keys[-1]) if shard.by == "hash" else int(ids[-1])
        return Batch(records, Cursor(key=key, id=int(ids[-1])), faults)

    def _scan_adopted(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        """The shard's rows of an adopted table: read in id order after the cursor's id, the
        shard's kept (every row of an id in one batch, so an id repeated is seen whole), until
        ``limit`` are kept or the table ends."""
        idc, table = quote(self.layout.id.name), quote(self.table)
        after: Any = None
        if cursor is not None and cursor.token is not None:
            after = int(cursor.token) if self.schema.id_kind == IdKind.INT else cursor.token
        kept: list[Records] = []
        faults = Faults()
        count = 0
        while count < limit:
            conds, params = [], []
            if after is not None:
                conds.append(f"{idc} > %s{self._cast}")
                params.append(after)
            if shard.by == "range":
                conds.append(f"{idc} >= %s AND {idc} < %s")
                params += [shard.lo, shard.hi]
            where = " AND ".join(conds) or "TRUE"
            # A hash shard keeps some of the rows it reads: read whole pages (the batch may pass
            # the limit by less than a page); otherwise just what the batch still needs.
            page = int(limit) if shard.by == "hash" and shard != WHOLE else int(limit) - count
            tail = f" LIMIT {page}"
            if not self.layout.unique_id:
                # Up to the limit-th id, with every other row of that id.
                last = self._query(
                    f"SELECT {idc} FROM {table} WHERE {where} ORDER BY {idc} "
                    f"OFFSET {page - 1} LIMIT 1",
                    params,
                )
                tail = ""
                if last:
                    where += f" AND {idc} <= %s{self._cast}"
                    params.append(self._id_param(last[0][0]))
            rows = self._query(
                f"SELECT {self.layout.select_list()} FROM {table} WHERE {where} "
                f"ORDER BY {idc}{tail}",
                params,
            )
            if not rows:
                break
            records, bad = self._decode(rows)
            after = self._id_param(rows[-1][0])
            if shard.by == "hash":
                records = records.filter(in_shard(records.labels, shard))
            kept.append(records)
            count += len(records)
            self.add_shard_faults(faults, bad, shard)
            if len(rows) < page and self.layout.unique_id:
                break
        nxt = cursor if after is None else Cursor(key=0, id=0, token=str(after))
        return Batch(Records.concat(kept, self.schema), nxt, faults)

    @property
    def _cast(self) -> str:
        """The cast a text parameter needs to compare with the id column."""
        return "::uuid" if self.layout.id.typname == "uuid" else ""

    def _id_param(self, value: Any) -> Any:
        """An id as a query parameter (a UUID read as raw bytes back to its text)."""
        return _id_param(value, self.schema)

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every label of a shard in scan order, read from the shard index (no vector crosses
        the wire) where the table has one."""
        if not self.layout.legacy:
            yield from super().iter_ids(shard, batch_size)
            return
        cursor: Cursor | None = None
        while True:
            where, order = _legacy_range(shard, cursor)
            rows = self._query(
                f"SELECT h, id FROM {self.table} WHERE {where} ORDER BY {order} "
                f"LIMIT {int(batch_size)}"
            )
            if not rows:
                return
            yield np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            h, last = int(rows[-1][0]), int(rows[-1][1])
            cursor = Cursor(key=h if shard.by == "hash" else last, id=last)

    # -- writing ----------------------------------------------------------------------------

    def write(self, records: Records, *, between_turns: Turns | None = None) -> int:
        """Insert or replace records by id (binary COPY into a staging table, one INSERT).

        Raises:
            DataError: records of another schema, NaN, an id twice.
            PreconditionError: an adopted table that does not allow writes, or has no unique
                index on its id column to replace records by.
        """
        self._writes()
        if not len(records):
            return 0
        records = records.conform(self.schema)
        if self.layout.legacy:
            ids64, vec32 = check_vectors(
                records.labels, records.vectors(), self.dimension, self.scope
            )
            return self._write_legacy(ids64, vec32)
        if not self.layout.unique_id:
            raise PreconditionError(
                f"table {self.table} has no unique index on {self.layout.id.name}: records cannot "
                "be replaced by id"
            )
        for v in self.schema.vectors:
            if not np.isfinite(records.raw_vectors(v.name)).all():
                raise DataError(f"{self.scope}: a vector holds NaN or infinity; nothing written")
        labels = records.labels
        if np.unique(labels).size != labels.size:
            raise DataError(f"{self.scope}: a batch repeats an id; send each id once per batch")
        layout = self.layout
        columns: list[list[bytes]] = [self._encode_ids(records)]
        names = [layout.id.name]
        stage = [f"{quote(layout.id.name)} {layout.id.type}"]
        if layout.key:
            columns.append(_fixed(hash_key(labels).astype(">i8")))
            names.append(layout.key)
            stage.append(f"{quote(layout.key)} bigint")
        for v, col in zip(self.schema.vectors, layout.vectors, strict=True):
            if col.array:
                raise PreconditionError(
                    f"column {col.name} of {self.table} is {col.type}: vecmigrate writes vector "
                    "and halfvec columns only"
                )
            columns.append(_vector_values(records.raw_vectors(v.name), v.dtype))
            names.append(col.name)
            stage.append(f"{quote(col.name)} {col.type}")
        for f, col in zip(self.schema.payload, layout.payload, strict=True):
            columns.append(_encode_payload(records.payload(f.name), col, f))
            names.append(col.name)
            stage.append(f"{quote(col.name)} {_staging_type(col)}")
        if layout.extra is not None and records.extra is not None:
            columns.append(
                _encode_payload(
                    records.extra, layout.extra, PayloadField(name="x", kind=FieldKind.JSON)
                )
            )
            names.append(layout.extra.name)
            stage.append(f"{quote(layout.extra.name)} jsonb")
        count = struct.pack(">h", len(columns))
        body = b"".join(b"".join((count, *row)) for row in zip(*columns, strict=True))
        by_name = {c.name: c for c in [*layout.vectors, *layout.payload]}
        values = ", ".join(_insert_expr(by_name[n]) if n in by_name else quote(n) for n in names)
        updates = ", ".join(f"{quote(n)} = EXCLUDED.{quote(n)}" for n in names[1:])
        with self._write_cursor() as cur:
            cur.execute(MARK_OWN_WRITES)
            cur.execute(f"CREATE TEMP TABLE vm_stage ({', '.join(stage)}) ON COMMIT DROP")
            quoted = ", ".join(quote(n) for n in names)
            with cur.copy(f"COPY vm_stage ({quoted}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.write(_HEADER + body + _TRAILER)
            cur.execute(
                f"INSERT INTO {quote(self.table)} ({quoted}) SELECT {values} FROM vm_stage "
                f"ON CONFLICT ({quote(layout.id.name)}) DO UPDATE SET {updates}"
            )
        return len(records)

    @contextlib.contextmanager
    def _write_cursor(self) -> Iterator[Any]:
        """A cursor on a raw connection of its own: committed when the block ends, rolled back
        when it raises."""
        raw = self.engine.raw_connection()
        try:
            with raw.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                yield cur
            raw.commit()
        except Exception:
            raw.rollback()
            raise
        finally:
            raw.close()

    def _encode_ids(self, records: Records) -> list[bytes]:
        kind, col = self.schema.id_kind, self.layout.id
        if kind == IdKind.UUID and col.typname == "uuid":
            return _fixed(uuid_bytes(records.ids))
        if kind == IdKind.INT:
            size = _INTS.get(col.typname, 8)
            return _fixed(records.labels.astype(f">i{size}"))
        return _length_prefixed([str(v).encode() for v in records.id_values()])

    def _write_legacy(self, ids64: Ids, vec32: Vectors) -> int:
        payload = encode_copy(ids64, hash_key(ids64), vec32)
        with self._write_cursor() as cur:
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
        return int(ids64.size)

    def _id_params(self, ids: Any) -> list[Any]:
        arr = id_array(ids, self.schema.id_kind)
        return [_id_param(v, self.schema) for v in arr.to_pylist()]

    def delete(self, ids: Ids | pa.Array) -> int:
        self._writes()
        values = self._id_params(ids)
        if not values:
            return 0
        idc = quote(self.layout.id.name)
        cast = "::uuid[]" if self.layout.id.typname == "uuid" else ""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(MARK_OWN_WRITES)
            result = conn.exec_driver_sql(
                f"DELETE FROM {quote(self.table)} WHERE {idc} = ANY(%(ids)s{cast})",
                {"ids": values},
            )
        return int(result.rowcount)

    # -- counting and fetching --------------------------------------------------------------

    def count(self, shard: ShardRef | None = None) -> int:
        if shard is not None and not self.keyed and shard.by == "hash":
            return sum(len(b) for b in self.iter_shard(shard, 50_000))
        sql = f"SELECT count(*) FROM {quote(self.table)}"
        params: list[Any] = []
        if shard is not None:
            col = (
                quote(self.layout.key or "h") if shard.by == "hash" else quote(self.layout.id.name)
            )
            sql += f" WHERE {col} >= %s AND {col} < %s"
            params = [shard.lo, shard.hi]
        return int(self._query(sql, params)[0][0])

    def id_quantiles(self, parts: int) -> list[int]:
        self._integer_ids("range shards")
        idc = quote(self.layout.id.name)
        sql = f"SELECT {idc} FROM {quote(self.table)} ORDER BY {idc} LIMIT 1 OFFSET %s"

        def id_at(offset: int) -> int | None:
            rows = self._query(sql, [offset])
            return None if not rows else int(rows[0][0])

        return increasing_bounds(id_at, self.count(), parts)

    def fetch_records(self, ids: pa.Array | Any) -> Records:
        """The records with these ids that exist (in id order)."""
        values = sorted(set(self._id_params(ids)), key=str)
        if not values:
            return Records.empty(self.schema)
        if self.layout.legacy:
            listed = ",".join(str(int(v)) for v in values)
            data = self._copy_out(
                f"SELECT id, h, embedding FROM {self.table} WHERE id IN ({listed}) ORDER BY id"
            )
            found, _, vectors = decode_copy(data, self.dimension)
            return Records.from_numpy(found, vectors, self.schema)
        idc = quote(self.layout.id.name)
        cast = "::uuid[]" if self.layout.id.typname == "uuid" else ""
        parts = []
        for at in range(0, len(values), 10_000):
            rows = self._query(
                f"SELECT {self.layout.select_list()} FROM {quote(self.table)} "
                f"WHERE {idc} = ANY(%s{cast}) ORDER BY {idc}",
                [values[at : at + 10_000]],
            )
            parts.append(self._decode(rows)[0])
        return Records.concat(parts, self.schema)

    def limits(self) -> Limits:
        """What the table cannot hold (see :func:`limits_of`)."""
        return limits_of(self.schema)

    def matching(self, flt: Filter) -> Ids:
        """Labels of the records whose payload matches ``flt`` (the database evaluates it)."""
        where, params = sql_filter(normalize(flt, self.schema), self.layout)
        idc = quote(self.layout.id.name)
        rows = self._query(f"SELECT {idc} FROM {quote(self.table)} WHERE {where}", params)
        if not rows:
            return np.empty(0, np.int64)
        return self._labels([r[0] for r in rows])

    def _labels(self, raw_ids: list[Any]) -> Ids:
        kind = self.schema.id_kind
        if kind == IdKind.INT:
            return np.asarray(raw_ids, np.int64)
        if kind == IdKind.UUID:
            arr = uuid_texts(np.frombuffer(b"".join(raw_ids), np.uint8).reshape(-1, 16))
        else:
            arr = pa.array(raw_ids, pa.string())
        return Records(self.schema, pa.RecordBatch.from_arrays([arr], names=["id"])).labels

    # -- native indexes ----------------------------------------------------------------------

    def index_name(self, spec: IndexSpec, metric: Metric, column: str | None = None) -> str:
        """Name of the native index built from ``spec`` on the primary vector (or on
        ``column``): stable, so building is idempotent."""
        # Canonical: a parameter added later, at its default, keeps the name (and the index);
        # how the index is built (memory, workers, lock timeout) is not part of what it is.
        described = json.loads(canonical(spec))
        for setting in BUILD_SETTINGS:
            described.pop(setting, None)
        key: list[Any] = [described, str(metric)]
        if column is not None:
            key.append(column)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.table.split('.')[-1][:40]}_{spec.kind}_{digest}"

    def create_index(
        self,
        spec: IndexSpec,
        metric: Metric,
        on_progress: Callable[[IndexBuildProgress], None] | None = None,
        every: float = 2.0,
    ) -> str:
        """Build a native HNSW or IVFFlat index on each vector column (the other vectors by the
        metric their source indexed them with); returns the primary one's name.

        Built with ``CREATE INDEX CONCURRENTLY`` on a connection of its own, so writes to the
        table go on during the build: a valid index of the same name is kept, an invalid one
        (left by a build that was killed, cancelled or timed out) is dropped and built again.
        ``on_progress`` is called every ``every`` seconds of the build, in the calling thread,
        with what ``pg_stat_progress_create_index`` says of it; whatever it raises cancels
        the build (the invalid index it leaves is rebuilt next time) and is raised.

        Raises:
            VecmigrateError: the build waited longer than the spec's ``lock_timeout_seconds``
                for older transactions or a lock on the table (retryable).
        """
        self._writes()
        if not isinstance(spec, PgvectorHnsw | PgvectorIvfflat):
            raise PreconditionError(f"pgvector cannot build {spec.kind} natively")
        first = ""
        for v, col in zip(self.schema.vectors, self.layout.vectors, strict=True):
            m = Metric(v.metric or metric) if v is not self.schema.primary else metric
            name = self.index_name(spec, m, None if v is self.schema.primary else col.name)
            using = _index_using(str(m), col.name, col.typname, spec, v.dimension)
            _Build(self.engine, self.table, name, spec, on_progress, every).run(using)
            first = first or name
        return first

    def _native_hits(self, query: NativeQuery) -> list[NativeHits]:
        """The native index's search (see :meth:`EngineSearch.native_search`), the ids as the
        table has them."""
        spec, metric, k, flt = query.spec, str(query.metric), query.k, query.flt
        op = _OPERATOR[metric]
        col = self.layout.vectors[0]
        vcol, vtype = indexed_expression(col.name, col.typname, spec, self.dimension)
        settings = []
        if isinstance(spec, PgvectorHnsw):
            settings.append(f"SET LOCAL hnsw.ef_search = {max(spec.ef_search, k)}")
            if flt is not None:
                # Keep scanning the graph until k rows pass the filter (pgvector 0.8).
                settings.append("SET LOCAL hnsw.iterative_scan = relaxed_order")
        elif isinstance(spec, PgvectorIvfflat):
            settings.append(f"SET LOCAL ivfflat.probes = {spec.probes}")
            if flt is not None:
                settings.append("SET LOCAL ivfflat.iterative_scan = relaxed_order")
        where, params = "TRUE", list[Any]()
        if flt is not None:
            where, params = sql_filter(flt, self.layout)
        idc = quote(self.layout.id.name)
        sql = (
            f"SELECT {idc}, {vcol} {op} %s::{vtype} AS d FROM {quote(self.table)} "
            f"WHERE {where} ORDER BY {vcol} {op} %s::{vtype} LIMIT %s"
        )
        found: list[NativeHits] = []
        raw = self._connection()
        try:
            with self._cursor(raw) as cur:
                for s in settings:
                    cur.execute(s)
                for q in query.vectors:
                    literal = "[" + ",".join(repr(float(x)) for x in q) + "]"
                    cur.execute(sql, [literal, *params, literal, k], binary=True)
                    hits = cur.fetchall()
                    ids = [h[0] for h in hits]
                    values = [float(dist) for _, dist in hits]
                    distances = (
                        [v * v for v in values]
                        if metric == "l2"
                        else ([1.0 + v for v in values] if metric == "ip" else values)
                    )
                    found.append((self._id_values(ids), self._labels(ids), distances))
            raw.commit()
        finally:
            raw.close()
        return found

    def _id_values(self, raw_ids: list[Any]) -> list[Any]:
        if self.schema.id_kind == IdKind.UUID:
            if not raw_ids:
                return []
            texts: list[Any] = uuid_texts(
                np.frombuffer(b"".join(raw_ids), np.uint8).reshape(-1, 16)
            ).to_pylist()
            return texts
        return list(raw_ids)

    # -- inventory ------------------------------------------------------------------------------

    def vector_indexes(self) -> dict[str, dict[str, Any]]:
        """The pgvector index on each vector column (kind, parameters and metric)."""
        info = _table_info(self.engine, self.table)
        return {
            idx["columns"][0]: _describe_vector_index(idx)
            for idx in info["indexes"]
            if idx["method"] in ("hnsw", "ivfflat") and idx["columns"]
        }

    def inventory(self, samples: int = 3) -> Inventory:
        """Rows, schema, indexes, size and a few records of the table."""
        info = _table_info(self.engine, self.table)
        vectors = {c.name for c in self.layout.vectors}
        payload_indexes = {
            idx["columns"][0]: idx["method"]
            for idx in info["indexes"]
            if len(idx["columns"]) == 1
            and idx["columns"][0] not in vectors
            and idx["columns"][0] != self.layout.id.name
            and idx["columns"][0] != self.layout.key
        }
        return self._inventory(
            self.table,
            samples,
            indexes=self.vector_indexes(),
            payload_indexes=payload_indexes,
            notes=list(self.layout.notes),
            size_bytes=info["size"],
        )


def _id_param(value: Any, schema: RecordSchema) -> Any:
    if schema.id_kind == IdKind.UUID:
        if isinstance(value, bytes | bytearray | memoryview):
            return str(uuid_texts(np.frombuffer(bytes(value), np.uint8).reshape(1, 16))[0])
        return str(value)
    if schema.id_kind == IdKind.INT:
        return int(value)
    return str(value)


# -- tables ----------------------------------------------------------------------------------


def _prepare(engine: Engine, url: str) -> None:
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


def _exists(engine: Engine, table: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table})
        return bool(found.scalar_one())


def _comment(engine: Engine, table: str) -> dict[str, Any] | None:
    """What vecmigrate wrote in the table's comment when it made it (None: not made by it)."""
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT obj_description(to_regclass(:t), 'pg_class')"), {"t": table}
        ).scalar_one_or_none()
    if not found or not str(found).startswith(MARKER):
        return None
    data: dict[str, Any] = json.loads(str(found)[len(MARKER) :])
    return data


def _legacy_layout(table: str, dim: int) -> Layout:
    schema = RecordSchema.plain(dim)
    return Layout(
        table=table,
        schema=schema,
        id=Column("id", "bigint", "int8", True),
        vectors=[Column("embedding", f"vector({dim})", "vector", True)],
        payload=[],
        extra=None,
        key="h",
        unique_id=True,
        legacy=True,
    )


def limits_of(schema: RecordSchema) -> Limits:
    """What a table of ``schema`` cannot hold: PostgreSQL's text and jsonb take no NUL."""
    return Limits(nul=False)


def _legacy_range(shard: ShardRef, cursor: Cursor | None) -> tuple[str, str]:
    """The WHERE and ORDER BY of a shard's rows after ``cursor`` in a table of vecmigrate's first
    layout (``id``, ``h``, ``embedding``)."""
    lo, after = seek_bounds(shard, cursor)
    column = "h" if shard.by == "hash" else "id"
    where = f"{column} >= {int(lo)} AND {column} < {int(shard.hi)}"
    if after is not None:
        where += f" AND (h, id) > ({int(after[0])}, {int(after[1])})"
    return where, "h, id" if shard.by == "hash" else "id"


def table_ddl(table: str, dimension: int) -> list[str]:
    """The statements that create a version's table of integer ids and one vector, and its
    shard index (if absent)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, "
        f"h bigint NOT NULL, embedding vector({dimension}) NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {table}_shard ON {table} (h, id)",
    ]


def index_using(spec: IndexSpec, metric: Metric, dimension: int, column: str = "embedding") -> str:
    """The ``USING`` clause of the native index ``spec`` on a ``vector`` column of ``dimension``.

    Raises:
        PreconditionError: pgvector has no such index kind.
    """
    return _index_using(str(metric), column, "vector", spec, dimension)


# -- native index builds ---------------------------------------------------------------------

# Fields of a pgvector index spec that say how the index is built, not what it is.
BUILD_SETTINGS = ("maintenance_work_mem", "parallel_workers", "lock_timeout_seconds")

_PROGRESS = (
    "SELECT command, phase, blocks_done, blocks_total, tuples_done, tuples_total, "
    "lockers_done, lockers_total FROM pg_stat_progress_create_index WHERE pid = %s"
)
_INDEX_STATE = (
    "SELECT i.indexrelid::bigint, i.indisvalid FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s) "
    "AND c.relname = %s"
)


def build_settings(spec: PgvectorHnsw | PgvectorIvfflat) -> list[str]:
    """The ``SET`` statements a build's own connection runs first: the spec's memory and
    parallel workers, its lock timeout, and no statement timeout (a role's default would cut
    a long build short and leave an invalid index to build again)."""
    settings = [
        f"SET lock_timeout = '{int(spec.lock_timeout_seconds)}s'",
        "SET statement_timeout = 0",
    ]
    if spec.maintenance_work_mem is not None:
        memory_kb(spec.maintenance_work_mem)  # a validated spec: a unit and digits, no quote
        settings.append(f"SET maintenance_work_mem = '{spec.maintenance_work_mem}'")
    if spec.parallel_workers is not None:
        settings.append(f"SET max_parallel_maintenance_workers = {int(spec.parallel_workers)}")
    return settings


def read_build_progress(
    conn: Any, pid: int, index: str, seconds: float = 0.0
) -> IndexBuildProgress | None:
    """What ``pg_stat_progress_create_index`` says of the build backend ``pid`` runs (None: it
    runs none), read on ``conn``, a psycopg connection other than the build's.

    The statistics a transaction reads stay as they were when it first read them: each
    reading is committed, so the next one sees the build move.
    """
    row = conn.execute(_PROGRESS, (pid,)).fetchone()
    conn.commit()
    if row is None:
        return None
    counts = [int(x or 0) for x in row[2:]]
    fraction = None
    for done, total in zip(counts[0::2], counts[1::2], strict=True):
        if total > 0:
            fraction = round(min(1.0, done / total), 4)
            break
    return IndexBuildProgress(
        index=index,
        command=str(row[0] or ""),
        phase=str(row[1] or ""),
        blocks_done=counts[0],
        blocks_total=counts[1],
        tuples_done=counts[2],
        tuples_total=counts[3],
        lockers_done=counts[4],
        lockers_total=counts[5],
        fraction=fraction,
        seconds=round(seconds, 1),
    )


class _Build:
    """One native index built with ``CREATE INDEX CONCURRENTLY`` (idempotent).

    The statement runs on a connection taken out of the pool (its ``SET``s reach no other
    user, and ``CONCURRENTLY`` needs autocommit) in a thread of its own, while the calling
    thread reads the build's progress on a second connection and hands it to ``on_progress``.
    """

    def __init__(
        self,
        engine: Engine,
        table: str,
        name: str,
        spec: PgvectorHnsw | PgvectorIvfflat,
        on_progress: Callable[[IndexBuildProgress], None] | None,
        every: float,
    ) -> None:
        self.engine, self.table, self.name, self.spec = engine, table, name, spec
        self.on_progress, self.every = on_progress, every
        schema = table.rsplit(".", 1)[0] + "." if "." in table else ""
        self.qualified = quote(schema + name)

    def run(self, using: str) -> None:
        """Build the index unless a valid one of its name exists; drop an invalid one first,
        or wait for the session that is building it.

        Raises:
            VecmigrateError: the build waited longer than its lock timeout (retryable), or the
                index is still invalid after being built again.
        """
        create = (
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote(self.name)} ON {quote(self.table)} "
            f"USING {using}"
        )
        for _ in range(4):
            state = self._state()
            if state is not None and state[1]:
                return
            if state is not None:
                builder = self._builder(state[0])
                if builder is not None:
                    # Another session (an earlier attempt of this build) is at it: follow it.
                    self._follow(builder)
                    continue
                self._statement(
                    f"DROP INDEX CONCURRENTLY IF EXISTS {self.qualified}",
                    "dropping the invalid index an earlier build left",
                )
            self._statement(create, "waiting for a lock on the table")
        raise VecmigrateError(
            f"index {self.name} on {self.table} is still invalid after it was built again; "
            "see the database's log for why its builds fail"
        )

    def _state(self) -> tuple[int, bool] | None:
        """The index's oid and whether it is valid (None: no index of that name)."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(_INDEX_STATE, (self.table, self.name)).first()
        return None if row is None else (int(row[0]), bool(row[1]))

    def _builder(self, oid: int) -> int | None:
        """The backend building the index of ``oid`` now (None: none is)."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_progress_create_index WHERE index_relid::bigint = %s",
                (oid,),
            ).first()
        return None if row is None else int(row[0])

    def _follow(self, pid: int) -> None:
        """Watch another session's build of the index until it ends."""

        def over(wait: float) -> bool:
            time.sleep(wait)
            with self.engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT 1 FROM pg_stat_progress_create_index WHERE pid = %s", (pid,)
                ).first()
            return row is None

        self._watch(pid, over)

    def _statement(self, sql: str, waiting: str) -> None:
        """Run ``sql`` on the build's own connection, watched (``waiting``: the phase while
        PostgreSQL reports none); cancel it if watching fails."""
        raw = self.engine.raw_connection()
        conn = raw.driver_connection
        assert conn is not None
        raw.detach()  # closed for good afterwards: its settings never reach the pool
        try:
            conn.rollback()
            conn.autocommit = True  # CONCURRENTLY cannot run in a transaction block
            # pgvector says here when the graph outgrows maintenance_work_mem (a slower build).
            conn.add_notice_handler(
                lambda d: log.warning("building %s: %s", self.name, d.message_primary)
            )
            for setting in build_settings(self.spec):
                conn.execute(setting)
            pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            failed: list[BaseException] = []

            def build() -> None:
                try:
                    conn.execute(sql)
                except BaseException as exc:  # raised in the calling thread below
                    failed.append(exc)

            def over(wait: float) -> bool:
                thread.join(wait)
                return not thread.is_alive()

            thread = threading.Thread(target=build, name=f"build {self.name}", daemon=True)
            thread.start()
            try:
                self._watch(pid, over, waiting)
            except BaseException:
                with self.engine.connect() as other:
                    other.exec_driver_sql("SELECT pg_cancel_backend(%s)", (pid,))
                thread.join()
                raise
            if failed:
                raise self._failure(failed[0]) from failed[0]
        finally:
            raw.close()

    def _watch(self, pid: int, done: Callable[[float], bool], waiting: str = "") -> None:
        """Hand the progress of ``pid``'s build to ``on_progress`` until ``done`` (which waits
        up to the seconds it is given) says the build is over; while PostgreSQL reports none,
        a progress of phase ``waiting`` (if given)."""
        began = time.monotonic()
        if self.on_progress is None:
            while not done(self.every):
                pass
            return
        monitor = self.engine.raw_connection()
        try:
            while not done(self.every):
                progress = read_build_progress(
                    monitor.driver_connection, pid, self.name, time.monotonic() - began
                )
                if progress is None and waiting:
                    seconds = round(time.monotonic() - began, 1)
                    progress = IndexBuildProgress(index=self.name, phase=waiting, seconds=seconds)
                if progress is not None:
                    self.on_progress(progress)
        finally:
            monitor.close()

    def _failure(self, exc: BaseException) -> BaseException:
        from psycopg.errors import LockNotAvailable

        if isinstance(exc, LockNotAvailable):
            return VecmigrateError(
                f"the build of index {self.name} waited more than "
                f"{self.spec.lock_timeout_seconds} s for a lock on {self.table} or for older "
                "transactions on it to end (a long transaction holds it): it will be tried "
                "again; end that transaction or raise the index's lock_timeout_seconds"
            )
        return exc


def _run_ddl(engine: Engine, ddl: list[str]) -> None:
    """Run ``ddl`` in one transaction, three times at the most: concurrent ``CREATE ... IF NOT
    EXISTS`` statements can collide (the loser fails on the catalog's unique index)."""
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                for stmt in ddl:
                    conn.execute(text(stmt))
            return
        except (IntegrityError, DBAPIError):
            if attempt == 2:
                raise


def _ensure_legacy(engine: Engine, table: str, dim: int) -> None:
    _run_ddl(engine, table_ddl(table, dim))


def _create(engine: Engine, table: str, scope: Scope, schema: RecordSchema) -> None:
    """Create a table for records of ``schema`` (idempotent): id, shard key, vectors, payload,
    extra; the shard index and the payload indexes; the comment naming scope and schema."""
    idtype = {IdKind.INT: "bigint", IdKind.UUID: "uuid", IdKind.STRING: "text"}[schema.id_kind]
    cols = [f"{quote(schema.id_name)} {idtype} PRIMARY KEY", f"{KEY_COLUMN} bigint NOT NULL"]
    for v in schema.vectors:
        vtype = "halfvec" if v.dtype == "float16" else "vector"
        cols.append(f"{quote(v.name)} {vtype}({v.dimension}) NOT NULL")
    for f in schema.payload:
        cols.append(f"{quote(f.name)} {_sql_type(f)}" + ("" if f.nullable else " NOT NULL"))
    if schema.extra is not None:
        cols.append(f"{quote(schema.extra)} jsonb")
    short = table.split(".")[-1][:40]
    comment = MARKER + json.dumps(
        {"scope": str(scope), "schema": schema.model_dump(mode="json")}, sort_keys=True
    )
    ddl = [
        f"CREATE TABLE IF NOT EXISTS {quote(table)} ({', '.join(cols)})",
        f"CREATE INDEX IF NOT EXISTS {quote(short + '_shard')} ON {quote(table)} "
        f"({KEY_COLUMN}, {quote(schema.id_name)})",
    ]
    for f in schema.payload:
        if f.indexed:
            method = "gin" if f.kind == FieldKind.JSON else "btree"
            name = f"{short}_{f.name}_{method}"[:63]
            ddl.append(
                f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} USING {method} "
                f"({quote(f.name)})"
            )
    escaped = comment.replace("'", "''")
    ddl.append(f"COMMENT ON TABLE {quote(table)} IS '{escaped}'")
    _run_ddl(engine, ddl)


def _own_layout(engine: Engine, table: str, made: dict[str, Any], scope: Scope) -> Layout:
    """The layout of a table vecmigrate made, from its comment.

    Raises:
        PreconditionError: it was made for another scope.
    """
    check_scope(made.get("scope"), scope, f"table {table}")
    schema = RecordSchema.model_validate(made["schema"])
    columns = {c.name: c for c in _columns(engine, table)}
    return Layout(
        table=table,
        schema=schema,
        id=columns[schema.id_name],
        vectors=[columns[v.name] for v in schema.vectors],
        payload=[columns[f.name] for f in schema.payload],
        extra=columns[schema.extra] if schema.extra is not None else None,
        key=KEY_COLUMN,
        unique_id=True,
    )


def _columns(engine: Engine, table: str) -> list[Column]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, a.attnotnull "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum"
            ),
            {"t": table},
        ).all()
    return [Column(str(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in rows]


def _table_info(engine: Engine, table: str) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT ic.relname, am.amname, i.indisunique, i.indisprimary, "
                "pg_get_indexdef(i.indexrelid), ic.reloptions, "
                "(SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(i.indkey::int2[]) "
                " WITH ORDINALITY k(attnum, n) JOIN pg_attribute a "
                " ON a.attrelid = i.indrelid AND a.attnum = k.attnum), "
                "(SELECT opcname FROM pg_opclass WHERE oid = i.indclass[0]), "
                "i.indexprs IS NOT NULL "
                "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                "JOIN pg_am am ON am.oid = ic.relam WHERE i.indrelid = to_regclass(:t)"
            ),
            {"t": table},
        ).all()
        size = conn.execute(
            text("SELECT pg_total_relation_size(to_regclass(:t))"), {"t": table}
        ).scalar_one()
    indexes = [
        {
            "name": str(r[0]),
            "method": str(r[1]),
            "unique": bool(r[2]),
            "primary": bool(r[3]),
            "definition": str(r[4]),
            "options": dict(o.split("=", 1) for o in (r[5] or [])),
            "columns": [] if r[8] else list(r[6] or []),
            "opclass": str(r[7] or ""),
        }
        for r in rows
    ]
    return {"indexes": indexes, "size": int(size or 0)}


def _describe_vector_index(idx: dict[str, Any]) -> dict[str, Any]:
    """A pgvector index as an index spec of ours (kind and parameters) plus its metric."""
    opclass = idx["opclass"]
    metric = next((m for m in ("cosine", "ip", "l2") if opclass.endswith(f"_{m}_ops")), "l2")
    options = idx["options"]
    if idx["method"] == "hnsw":
        spec: dict[str, Any] = {
            "kind": "pgvector_hnsw",
            "m": int(options.get("m", 16)),
            "ef_construction": int(options.get("ef_construction", 64)),
        }
    else:
        spec = {"kind": "pgvector_ivfflat", "lists": int(options.get("lists", 100))}
    return {"index": spec, "metric": metric, "name": idx["name"]}


def _adopted_layout(engine: Engine, ref: PgvectorStoreRef) -> Layout:
    """How an existing table maps onto records, from its catalog and the reference's mapping.

    Raises:
        PreconditionError: no usable id column, no vector column, a column the mapping names
            that the table lacks, or a payload column of a type vecmigrate cannot carry.
    """
    assert ref.table is not None
    table = ref.table
    columns = _columns(engine, table)
    by_name = {c.name: c for c in columns}
    info = _table_info(engine, table)
    singles = [i for i in info["indexes"] if len(i["columns"]) == 1]
    unique_cols = {i["columns"][0] for i in singles if i["unique"]}
    primary = [i["columns"] for i in info["indexes"] if i["primary"]]
    notes: list[str] = []

    def need(name: str, what: str) -> Column:
        if name not in by_name:
            raise PreconditionError(
                f"table {table} has no column {name!r} ({what}); its columns are "
                f"{', '.join(by_name)}"
            )
        return by_name[name]

    if ref.id_column is not None:
        idcol = need(ref.id_column, "id_column")
    elif primary and len(primary[0]) == 1:
        idcol = by_name[primary[0][0]]
    else:
        candidates = [c for c in columns if c.name in unique_cols and c.not_null]
        if not candidates:
            raise PreconditionError(
                f"table {table} has no single-column primary key; name its id column with id_column"
            )
        idcol = candidates[0]
    if idcol.typname in _INTS:
        id_kind = IdKind.INT
    elif idcol.typname == "uuid":
        id_kind = IdKind.UUID
    elif idcol.typname in _TEXTS:
        id_kind = IdKind.STRING
    else:
        raise PreconditionError(
            f"column {idcol.name} of {table} is {idcol.type}: ids are integers, text or UUIDs"
        )
    unique_id = idcol.name in unique_cols
    if not unique_id:
        notes.append(
            f"{idcol.name} has no unique index: ids that occur more than once are quarantined, "
            "and each batch sorts the rows after the cursor (add an index to read faster)"
        )
    vector_indexes = {
        i["columns"][0]: _describe_vector_index(i)
        for i in info["indexes"]
        if i["method"] in ("hnsw", "ivfflat") and i["columns"]
    }
    if ref.vector_columns is not None:
        vcols = [need(n, "vector_columns") for n in ref.vector_columns]
    else:
        vcols = [c for c in columns if c.typname in ("vector", "halfvec") and c is not idcol]
    if not vcols:
        raise PreconditionError(
            f"table {table} has no vector or halfvec column; name the vector column with "
            "vector_columns"
        )
    vectors = []
    for c in vcols:
        dims = re.search(r"\((\d+)\)", c.type)
        if c.typname in ("vector", "halfvec") and dims:
            dim = int(dims.group(1))
        elif c.typname in ("vector", "halfvec", "_float4", "_float8"):
            dim = _common_length(engine, table, c)
        else:
            raise PreconditionError(
                f"column {c.name} of {table} is {c.type}: vectors are vector, halfvec, real[] "
                "or double precision[]"
            )
        found = vector_indexes.get(c.name)
        vectors.append(
            VectorField(
                name=c.name,
                dimension=dim,
                dtype="float16" if c.typname == "halfvec" else "float32",
                metric=found["metric"] if found else None,
            )
        )
    taken = {idcol.name, *(c.name for c in vcols)}
    if ref.payload_columns == "all":
        pcols = [c for c in columns if c.name not in taken]
    else:
        pcols = [need(n, "payload_columns") for n in ref.payload_columns]
    indexed = {i["columns"][0]: i["method"] for i in singles}
    payload = [
        PayloadField(
            name=c.name,
            kind=_kind_of(c),
            native=c.type,
            nullable=not c.not_null,
            indexed=c.name in indexed,
        )
        for c in pcols
    ]
    schema = RecordSchema(
        id_kind=id_kind, id_name=idcol.name, vectors=tuple(vectors), payload=tuple(payload)
    )
    return Layout(
        table=table,
        schema=schema,
        id=idcol,
        vectors=vcols,
        payload=pcols,
        extra=None,
        key=None,
        unique_id=unique_id,
        adopted=True,
        notes=notes,
    )


def _common_length(engine: Engine, table: str, col: Column) -> int:
    """The most common length of a vector column without a declared dimension (rows of other
    lengths are quarantined)."""
    length = "vector_dims" if col.typname in ("vector", "halfvec") else "cardinality"
    with engine.connect() as conn:
        found = conn.execute(
            text(
                f"SELECT {length}({quote(col.name)}) AS n FROM "
                f"(SELECT {quote(col.name)} FROM {quote(table)} LIMIT 10000) s "
                f"WHERE {quote(col.name)} IS NOT NULL GROUP BY n ORDER BY count(*) DESC LIMIT 1"
            )
        ).scalar_one_or_none()
    if not found:
        raise PreconditionError(
            f"column {col.name} of {table} has no dimension and no rows to find one from"
        )
    return int(found)


# -- stable names: a view applications query, swapped between versions' tables --------------

# The comment on a view vecmigrate made for a stable name (a view without it is not ours).
VIEW_MARK = "vecmigrate:stable-name"
# ... on a view made by renaming the table applications used (undone by renaming it back).
RENAMED_MARK = VIEW_MARK + " (the table was renamed)"
# How long a switch waits for the view's lock before it gives up (and is retried), so it never
# queues behind a long transaction and holds every reader up behind it.
LOCK_TIMEOUT = "2s"
# The shard keys of vecmigrate's tables: kept out of a view.
_KEYS = frozenset({KEY_COLUMN, "h"})


def _view_reads(conn: Any, name: str) -> tuple[int, str, str] | None:
    """The table (oid, name) the stable-name view ``name`` reads, and the view's comment (None:
    no such relation).

    Raises:
        PreconditionError: ``name`` is a table (or another relation), or a view vecmigrate did
            not make.
    """
    row = conn.execute(
        text(
            "SELECT c.relkind::text, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "WHERE c.oid = to_regclass(:n)"
        ),
        {"n": name},
    ).first()
    if row is None:
        return None
    if row[0] != "v":
        raise PreconditionError(
            f"{name} is a table applications use by its name, not a view: prepare it first "
            "(vecmigrate stable-name prepare renames the table and creates the view "
            f"{name} over it, in one transaction)"
        )
    if not str(row[1] or "").startswith(VIEW_MARK):
        raise PreconditionError(f"view {name} was not made by vecmigrate: it is not switched")
    read = conn.execute(
        text(
            "SELECT DISTINCT d.refobjid::int, d.refobjid::regclass::text FROM pg_rewrite r "
            "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
            "AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class "
            "WHERE r.ev_class = to_regclass(:n)"
        ),
        {"n": name},
    ).all()
    if len(read) != 1:
        raise PreconditionError(f"view {name} reads {len(read)} tables, not one: not switched")
    return int(read[0][0]), str(read[0][1]), str(row[1])


def view_target(engine: Engine, name: str) -> str | None:
    """The table the stable-name view ``name`` reads (None: no such view)."""
    with engine.connect() as conn:
        found = _view_reads(conn, name)
    return found[1] if found else None


@contextlib.contextmanager
def _switching(engine: Engine, name: str) -> Iterator[Any]:
    """One transaction that gives up on a lock after :data:`LOCK_TIMEOUT`.

    Raises:
        TimeoutError: the lock was held by another transaction all that time (a retry may
            find it free).
    """
    try:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            yield conn
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":
            raise TimeoutError(
                f"the lock on {name} was held by another transaction for {LOCK_TIMEOUT}: "
                "nothing changed; retry once it ends"
            ) from None
        raise


def point_view(
    engine: Engine,
    name: str,
    table: str,
    *,
    create: bool = True,
    drain: Callable[[], object] | None = None,
) -> StableNameSwitch:
    """Point the view ``name`` at ``table``: drop and create it in one transaction (readers
    wait for the commit, then read the new table), never waiting longer than
    :data:`LOCK_TIMEOUT` for its lock; then check it took.

    With ``drain`` (a migration that captures writes on both sides), the transaction first
    drops the view (writers and readers by the name wait from then on), locks the table the
    view read against writes (``EXCLUSIVE``: still readable, so ``drain`` can read it from
    its own connections), calls ``drain`` to replay what was captured there onto the other
    side, and only then creates the view over ``table`` and commits: no write made by the name
    before the switch is missing from the side it moves to, and none fails; it waits.

    Raises:
        PreconditionError: ``name`` is a table, or a view vecmigrate did not make.
        TimeoutError: a long transaction holds the view.
    """
    with engine.connect() as conn:
        before = _view_reads(conn, name)
        oid = conn.execute(text("SELECT to_regclass(:t)::oid::int"), {"t": table}).scalar_one()
    if oid is None:
        raise NotFoundError(f"table {table} does not exist: no view over it")
    if (before is not None and before[0] == oid) or (before is None and not create):
        shown = before[1] if before else None
        return StableNameSwitch(name=name, kind="view", before=shown, after=shown)
    with _switching(engine, name) as conn:
        # The view first, then the table: a writer by the name takes them in that order, so the
        # two never wait for each other in a cycle.
        conn.execute(text(f"DROP VIEW IF EXISTS {quote(name)}"))
        if drain is not None and before is not None:
            conn.execute(text(f"LOCK TABLE {before[1]} IN EXCLUSIVE MODE"))
            drain()
        for stmt in _view_sql_in(conn, name, table, before[2] if before else VIEW_MARK):
            conn.execute(text(stmt))
    with engine.connect() as conn:
        after = _view_reads(conn, name)
    if after is None or after[0] != oid:
        raise DataError(f"view {name} reads {after and after[1]} after the switch, not {table}")
    return StableNameSwitch(
        name=name, kind="view", before=before[1] if before else None, after=after[1], changed=True
    )


def rename_into_view(engine: Engine, name: str, table: str) -> StableNameSwitch:
    """The preparation of an adopted table applications use by its name: rename the table
    ``name`` to ``table`` and create the view ``name`` over it, in one transaction (undone by
    :func:`drop_view`). Done already: nothing changes.

    Raises:
        PreconditionError: ``name`` is not a table, ``table`` exists, or ``table`` names
            another schema.
    """
    schema, _, bare = table.rpartition(".")
    if schema and schema != name.rpartition(".")[0]:
        raise PreconditionError(f"{table} is in another schema than {name}: a rename keeps it")
    with engine.connect() as conn:
        kind = conn.execute(
            text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:n)"), {"n": name}
        ).scalar_one_or_none()
        taken = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one()
        if kind == "v":
            found = _view_reads(conn, name)
            oid = conn.execute(text("SELECT to_regclass(:t)::oid::int"), {"t": table}).scalar()
            if found is not None and found[0] == oid:
                return StableNameSwitch(name=name, kind="view", before=found[1], after=found[1])
    if kind not in ("r", "p"):
        raise PreconditionError(f"{name} is not a table: there is nothing to prepare")
    if taken:
        raise PreconditionError(f"{table} exists already: name a free table to rename {name} to")
    with _switching(engine, name) as conn:
        conn.execute(text(f"ALTER TABLE {quote(name)} RENAME TO {quote(bare)}"))
        for stmt in _view_sql_in(conn, name, table, RENAMED_MARK):
            conn.execute(text(stmt))
    return StableNameSwitch(name=name, kind="view", before=None, after=table, changed=True)


def _view_sql_in(conn: Any, name: str, table: str, mark: str = VIEW_MARK) -> list[str]:
    """The statements that create the view ``name`` over ``table`` (read in ``conn``'s
    transaction, which may have just renamed it): every column but vecmigrate's shard key, so
    a simple view PostgreSQL can write through."""
    rows = conn.execute(
        text(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(:t) "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ),
        {"t": table},
    ).all()
    columns = [quote(str(r[0])) for r in rows if str(r[0]) not in _KEYS]
    if not columns:
        raise NotFoundError(f"table {table} does not exist: no view over it")
    escaped = mark.replace("'", "''")
    return [
        f"CREATE VIEW {quote(name)} AS SELECT {', '.join(columns)} FROM {quote(table)}",
        f"COMMENT ON VIEW {quote(name)} IS '{escaped}'",
    ]


def drop_view(engine: Engine, name: str, table: str) -> bool:
    """Undo a preparation: remove the stable-name view ``name`` that reads ``table`` (when it
    was made by renaming the table, rename ``table`` back to ``name`` in the same transaction);
    whether there was anything to undo.

    Raises:
        PreconditionError: the view reads another table (a migration switched it: roll it
            back first).
    """
    with engine.connect() as conn:
        found = _view_reads(conn, name)
        oid = conn.execute(text("SELECT to_regclass(:t)::oid::int"), {"t": table}).scalar()
    if found is None:
        return False
    if found[0] != oid:
        raise PreconditionError(
            f"view {name} reads {found[1]}, not {table}: point it back at {table} first"
        )
    with _switching(engine, name) as conn:
        conn.execute(text(f"DROP VIEW {quote(name)}"))
        if found[2] == RENAMED_MARK:
            bare = quote(name.rpartition(".")[2])
            conn.execute(text(f"ALTER TABLE {quote(table)} RENAME TO {bare}"))
    return True
