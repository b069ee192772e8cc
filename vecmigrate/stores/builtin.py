"""The built-in store: records in a SQL database (SQLite by default), index artifacts on disk.

Each (tenant, collection, version) is a namespace; a handle is opened for exactly one and every
statement filters on its namespace id, so a handle cannot read or write outside its scope.
Records are clustered by (namespace, shard key, id): a hash shard is one contiguous range of the
table itself, read in a stable order from a cursor, and a copy that writes in scan order appends.
A unique index on (namespace, id) serves lookups by id and the upsert's conflict target.

Why clustered by shard key: every copy, build and profile scans shards, and with the table keyed
by id each scanned row was a lookup into the table from a secondary index. Measured on 200,000 x
128 vectors in SQLite: a full shard scan 2.6 s -> 0.28 s, a copy's inserts in scan order 8.2 s ->
2.0 s; inserts in id order (seeding) slow down instead, so ``upsert`` writes each call's rows in
key order and ``seed_collection`` feeds them in key order. Stores created by earlier versions keep
the id-keyed layout: every statement below works on both, only slower on the old one.

A namespace of integer ids and one float32 vector (what ``seed`` makes) keeps exactly the rows
it always had. Other records keep their label in ``id`` (see :mod:`vecmigrate.records.ids`), the
id itself in ``rid``, the primary vector in its own dtype in ``vec``, the other vectors in
``more`` and the payload in ``payload`` (one compact JSON array of the fields' canonical values);
the namespace keeps the record schema.

A namespace may read another's records instead of its own (``records_ns``): a version that
changes the index alone (a migration with ``records: shared``) keeps no copy. Dropping one of
the namespaces that read a set of records drops the records only with the last of them; an
owner dropped before its readers stays as a retired row, so its number is never given again.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any, cast

import numpy as np
import orjson
import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Insert,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

from vecmigrate.catalog.engines import DatabaseAccess, begin, engine_for, once_per_engine
from vecmigrate.errors import DataError, NotFoundError, PreconditionError
from vecmigrate.model.records import FieldKind, IdKind, RecordSchema
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.records.batch import Faults, Records, assemble
from vecmigrate.records.payload import ARROW_TYPES
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import MAX_ID, Ids, Vectors, repeated_ids
from vecmigrate.stores.base import (
    Batch,
    Inventory,
    ScanningStore,
    Scope,
    Turns,
    check_dimension,
    check_schema,
    increasing_bounds,
    seek_bounds,
)

metadata = MetaData()

namespaces = Table(
    "vm_namespaces",
    metadata,
    Column("ns", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("collection", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("dimension", Integer, nullable=False),
    # The record schema as JSON; NULL for integer ids and one float32 vector.
    Column("record_schema", Text),
    # The namespace whose records this one reads; NULL: its own.
    Column("records_ns", Integer),
    # 1: dropped, kept only because other namespaces read its records.
    Column("retired", Integer),
    UniqueConstraint("tenant", "collection", "version"),
)


def new_namespace(scope: Scope, schema: RecordSchema) -> Insert:
    """The row that creates ``scope``'s namespace for records of ``schema``."""
    return namespaces.insert().values(
        tenant=scope.tenant,
        collection=scope.collection,
        version=scope.version,
        dimension=schema.primary.dimension,
        record_schema=None if schema.is_plain else schema.model_dump_json(),
    )


vectors = Table(
    "vm_vectors",
    metadata,
    Column("ns", Integer, nullable=False),
    Column("id", BigInteger, nullable=False),
    Column("h", BigInteger, nullable=False),
    Column("vec", LargeBinary, nullable=False),
    Column("rid", Text),
    Column("more", LargeBinary),
    Column("payload", LargeBinary),
    PrimaryKeyConstraint("ns", "h", "id", name="vm_vectors_pk"),
    Index("vm_vectors_id", "ns", "id", unique=True),
    sqlite_with_rowid=False,
)

_UPSERT_SQL = (
    "INSERT INTO vm_vectors (ns, id, h, vec) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (ns, id) DO UPDATE SET h = excluded.h, vec = excluded.vec"
)
# The same upsert of a whole batch in one statement, for SQLite: each row's id and shard key
# from a JSON array of pairs, its vector a slice of one blob of all of them. executemany binds
# each row from Python and lets go of the interpreter around each row's insert, so every row
# waited to take it back from whatever else the process ran (the read ahead, the streamed
# checks' search): one statement lets go of it once a batch. SQLite has JSON built in from
# 3.38 (Python's own module may link an older library: then executemany).
PACKED_WRITES = sqlite3.sqlite_version_info >= (3, 38, 0)
_UPSERT_PACKED_SQL = (
    "INSERT INTO vm_vectors (ns, id, h, vec) "
    "SELECT ?1, r.value ->> 0, r.value ->> 1, substr(?3, r.key * ?4 + 1, ?4) "
    "FROM json_each(?2) AS r WHERE true "
    "ON CONFLICT (ns, id) DO UPDATE SET h = excluded.h, vec = excluded.vec"
)
_UPSERT_RECORDS_SQL = (
    "INSERT INTO vm_vectors (ns, id, h, vec, rid, more, payload) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (ns, id) DO UPDATE SET h = excluded.h, vec = excluded.vec, rid = excluded.rid, "
    "more = excluded.more, payload = excluded.payload"
)
# A batch written in turns (``BuiltinStore.write`` with ``between_turns``): each turn's
# transaction aims at this many seconds, the first writes this many rows, and none fewer than
# the least. 10 ms: a gateway's write waiting on a turn sleeps in SQLite's busy handler for
# steps of 1, 2, 5 and 10 ms at first, and so finds the lock free within about a turn.
TURN_SECONDS = 0.01
FIRST_TURN_ROWS = 500
MIN_TURN_ROWS = 100
# Columns added after the first release, for stores made before them.
_ADDED = {
    "vm_namespaces": {"record_schema": "TEXT", "records_ns": "INTEGER", "retired": "INTEGER"},
    "vm_vectors": {"rid": "TEXT", "more": "BLOB", "payload": "BLOB"},
}


def _key_filter(shard: ShardRef) -> tuple[str, str]:
    column = "h" if shard.by == "hash" else "id"
    order = "h, id" if shard.by == "hash" else "id"
    return column, order


def _prepare(engine: Engine) -> None:
    metadata.create_all(engine)
    found = inspect(engine)
    for table, added in _ADDED.items():
        have = {c["name"] for c in found.get_columns(table)}
        for column, kind in added.items():
            if column not in have:
                if engine.dialect.name == "postgresql" and kind == "BLOB":
                    kind = "BYTEA"
                with contextlib.suppress(Exception), begin(engine) as conn:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


def _dtype(dtype: str) -> np.dtype[Any]:
    return np.dtype("<f2") if dtype == "float16" else np.dtype("<f4")


def encode_payload(records: Records) -> list[bytes | None]:
    """Each record's payload as one compact JSON array of its fields' canonical values (a JSON
    field as its text, a timestamp in microseconds, a float that is not finite as a string),
    the extra object last."""
    schema = records.schema
    if not schema.has_payload:
        return [None] * len(records)
    columns: list[list[Any]] = []
    for f in schema.payload:
        arr = records.payload(f.name)
        if f.kind == FieldKind.TIMESTAMP:
            arr = arr.cast(pa.int64())
        values = arr.to_pylist()
        if f.kind == FieldKind.FLOAT:
            values = [v if v is None or math.isfinite(v) else repr(v) for v in values]
        columns.append(values)
    if records.extra is not None:
        columns.append(records.extra.to_pylist())
    return [orjson.dumps(list(row)) for row in zip(*columns, strict=True)]


def decode_payload(
    schema: RecordSchema, blobs: list[bytes | None]
) -> tuple[dict[str, pa.Array], pa.Array | None]:
    """The payload columns and extra objects of rows written by :func:`encode_payload`."""
    width = len(schema.payload) + (schema.extra is not None)
    rows = [orjson.loads(b) if b is not None else [None] * width for b in blobs]
    columns = list(zip(*rows, strict=True)) if rows else [()] * width
    out: dict[str, pa.Array] = {}
    for f, values in zip(schema.payload, columns, strict=False):
        if f.kind == FieldKind.TIMESTAMP:
            out[f.name] = pa.array(values, pa.int64()).cast(ARROW_TYPES[f.kind])
        elif f.kind == FieldKind.FLOAT:
            out[f.name] = pa.array(
                [float(v) if isinstance(v, str) else v for v in values], pa.float64()
            )
        else:
            out[f.name] = pa.array(values, ARROW_TYPES[f.kind])
    extra = pa.array(columns[-1], pa.string()) if schema.extra is not None else None
    return out, extra


class BuiltinStore(ScanningStore):
    """A :class:`~vecmigrate.stores.base.VectorStore` over SQLAlchemy."""

    kind = "builtin"

    def __init__(self, engine: Engine, scope: Scope, ns: int, schema: RecordSchema) -> None:
        super().__init__(scope, schema)
        self.engine = engine
        self.ns = ns  # the namespace whose records this one reads: its own, or the one it shares
        self.plain = schema.is_plain

    @property
    def records_at(self) -> str:
        """Where the records are: two handles with the same value read and write the same
        records (a version that shares another's)."""
        return f"{self.engine.url.render_as_string(hide_password=True)}#ns{self.ns}"

    @classmethod
    def open(
        cls,
        url: str,
        scope: Scope,
        dimension: int | None = None,
        access: DatabaseAccess | None = None,
        *,
        schema: RecordSchema | None = None,
        reads: int | None = None,
    ) -> BuiltinStore:
        """Open the namespace of ``scope``; create it when ``dimension`` or ``schema`` is given
        (reading the records of namespace ``reads``, if given, see :meth:`share`).
        ``access`` carries a PostgreSQL database's password reference and TLS options.

        Raises:
            NotFoundError: the namespace does not exist and neither was given.
            PreconditionError: it was dropped while others read its records, and was to be
                created.
            DataError: it exists with another dimension or schema.
        """
        engine = engine_for(url, access)
        once_per_engine(engine, "builtin-store", lambda: _prepare(engine))
        if schema is None and dimension is not None:
            schema = RecordSchema.plain(dimension)
        key = (
            (namespaces.c.tenant == scope.tenant)
            & (namespaces.c.collection == scope.collection)
            & (namespaces.c.version == scope.version)
        )
        query = select(
            namespaces.c.ns,
            namespaces.c.dimension,
            namespaces.c.record_schema,
            namespaces.c.records_ns,
            namespaces.c.retired,
        ).where(key)
        with engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None and schema is not None:
            # A concurrent worker may create it first: the unique key decides, then re-read.
            with contextlib.suppress(IntegrityError), begin(engine) as conn:
                conn.execute(new_namespace(scope, schema).values(records_ns=reads))
            with engine.connect() as conn:
                row = conn.execute(query).first()
        if row is not None and row[4]:
            # Dropped while other versions read its records: its name is not free again.
            gone = f"{scope} was dropped (other versions read its records)"
            if schema is not None:
                raise PreconditionError(f"{gone}; name another version")
            raise NotFoundError(f"{gone} in the built-in store at {url}")
        if row is None:
            raise NotFoundError(f"{scope} does not exist in the built-in store at {url}")
        ns = int(row[3]) if row[3] is not None else int(row[0])
        dim = int(row[1])
        found = RecordSchema.model_validate_json(row[2]) if row[2] else RecordSchema.plain(dim)
        check_dimension(scope, dim, dimension)
        check_schema(scope, found, schema, dimension)
        return cls(engine, scope, ns, found)

    @classmethod
    def share(
        cls, url: str, scope: Scope, records_of: Scope, access: DatabaseAccess | None = None
    ) -> BuiltinStore:
        """Open ``scope`` as a namespace that reads the records of ``records_of`` (whose own
        may be another's in turn), created on first use: nothing is copied, and a write through
        either is a write to both.

        Raises:
            NotFoundError: ``records_of`` does not exist.
            PreconditionError: ``scope`` exists with records of its own, or was dropped.
        """
        source = cls.open(url, records_of, access=access)
        found = cls.open(url, scope, access=access, schema=source.schema, reads=source.ns)
        if found.ns != source.ns:
            raise PreconditionError(
                f"{scope} holds records of its own, not those of {records_of}; name another version"
            )
        return found

    def _columns(self) -> str:
        return "id, h, vec" if self.plain else "id, h, vec, rid, more, payload"

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        column, order = _key_filter(shard)
        lo, after = seek_bounds(shard, cursor)
        where = f"ns = ? AND {column} >= ? AND {column} < ?"
        params: list[Any] = [self.ns, lo, shard.hi]
        if after is not None:
            where += " AND (h, id) > (?, ?)"
            params += after
        params.append(limit)
        rows = self._rows(
            f"SELECT {self._columns()} FROM vm_vectors WHERE {where} ORDER BY {order} LIMIT ?",
            params,
        )
        if not rows:
            return Batch(Records.empty(self.schema), cursor)
        last = rows[-1]
        key = int(last[1]) if shard.by == "hash" else int(last[0])
        records, faults = self._records(rows)
        return Batch(records, Cursor(key=key, id=int(last[0])), faults)

    def _records(self, rows: list[tuple[Any, ...]]) -> tuple[Records, Faults]:
        """Records from rows of :meth:`_columns` (a vector corrupted in the database to NaN or
        infinity makes its record a fault, see ``assemble``)."""
        n = len(rows)
        schema = self.schema
        labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        primary = schema.primary
        vecs = np.frombuffer(b"".join(r[2] for r in rows), dtype=_dtype(primary.dtype)).reshape(
            n, primary.dimension
        )
        if self.plain:
            if not np.isfinite(vecs).all():
                return assemble(schema, pa.array(labels), {primary.name: vecs})
            records = Records.from_numpy(labels, vecs, schema)
            records.__dict__["labels"] = labels
            return records, Faults()
        if schema.id_kind == IdKind.INT:
            ids = pa.array(labels)
        else:
            ids = pa.array([r[3] for r in rows], pa.string())
        columns: dict[str, Any] = {primary.name: vecs}
        if len(schema.vectors) > 1:
            more = np.frombuffer(b"".join(r[4] for r in rows), np.uint8).reshape(n, -1)
            at = 0
            for v in schema.vectors[1:]:
                width = v.dimension * _dtype(v.dtype).itemsize
                columns[v.name] = more[:, at : at + width].copy().view(_dtype(v.dtype))
                at += width
        payload, extra = decode_payload(schema, [r[5] for r in rows])
        return assemble(schema, ids, columns, payload, extra)

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every label of a shard in label order, read from the id index alone: it holds each
        record's shard key too, so no page of vectors is read (300,000 ids on SQLite in 0.10-0.12
        s against 2.8-3.1 s with their 384-dimensional vectors, 0.56-0.63 s with 128)."""
        if shard.by == "hash":
            sql = "SELECT id FROM vm_vectors WHERE ns = ? AND h >= ? AND h < ? AND id >= ? "
            bounds, start = [shard.lo, shard.hi], -(1 << 63)
        else:  # the id bounds themselves, from the last id read on (see ``seek_bounds``)
            sql = "SELECT id FROM vm_vectors WHERE ns = ? AND id < ? AND id >= ? "
            bounds, start = [shard.hi], shard.lo
        while True:
            rows = self._rows(sql + "ORDER BY id LIMIT ?", [self.ns, *bounds, start, batch_size])
            if not rows:
                return
            yield np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if int(rows[-1][0]) >= MAX_ID + 1:
                return
            start = int(rows[-1][0]) + 1

    def _rows(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """The rows of a query with ``?`` marks, fetched from the driver's own cursor."""
        with self.engine.connect() as conn:
            # The driver's own cursor, fetched from directly: SQLAlchemy's row objects (even
            # through exec_driver_sql) cost more than the read itself, 0.32 s of 0.58 s for
            # 200,000 rows. A scan is every copy's, build's and profile's inner loop.
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None  # a checked-out connection has one
            db_cursor = dbapi.cursor()
            try:
                db_cursor.execute(sql.replace("?", mark), tuple(params))
                rows = cast(list[tuple[Any, ...]], db_cursor.fetchall())
            finally:
                db_cursor.close()
        return rows

    def write(self, records: Records, *, between_turns: Turns | None = None) -> int:
        """Insert or replace records by id (every record of the batch once).

        With ``between_turns`` on SQLite, the batch is written in turns of about
        ``TURN_SECONDS`` each, one transaction a turn, the call made between them: SQLite
        takes one writer at a time, and a writer of another process (a gateway's) that finds
        it busy sleeps in steps of up to 100 ms until it is free, so a batch written in one
        transaction held every such write for its whole length. Every record is checked
        before the first turn.

        Raises:
            DataError: a record of another schema, a NaN or infinite vector, an id twice.
        """
        self._writes()
        n = len(records)
        if n == 0:
            return 0
        records = records.conform(self.schema)
        labels = records.labels
        for v in self.schema.vectors:
            if not np.isfinite(records.raw_vectors(v.name)).all():
                raise DataError(f"{self.scope}: a vector holds NaN or infinity; nothing written")
        if repeated_ids(labels):
            raise DataError(f"{self.scope}: a batch repeats an id; send each id once per batch")
        keys = hash_key(labels)
        # In key order: the table is clustered by it. A copy's batches come in scan order
        # already (strictly increasing keys: nothing to do); otherwise a stable sort, which
        # keeps repeated ids in the caller's order, so the last write of an id still wins.
        if not (keys[1:] > keys[:-1]).all():
            order = np.lexsort((labels, keys))
            records, labels, keys = records.take(order), labels[order], keys[order]
        primary = self.schema.primary
        raw = np.ascontiguousarray(records.raw_vectors(primary.name), _dtype(primary.dtype))
        if self.plain and PACKED_WRITES and self.engine.dialect.name == "sqlite":
            width = raw.shape[1] * raw.itemsize
            pairs = np.stack([labels, keys], axis=1).astype(np.int64, copy=False)

            def packed(at: int, stop: int) -> None:
                keyed = orjson.dumps(pairs[at:stop], option=orjson.OPT_SERIALIZE_NUMPY)
                self._insert(_UPSERT_PACKED_SQL, (self.ns, keyed, raw[at:stop].tobytes(), width))

            self._in_turns(n, packed, between_turns)
            return n
        # Each vector's bytes as one item of a void array: numpy makes the list of blobs in
        # one call (slicing one bytes object per row in Python took 3x as long, 4.4 ms of a
        # 10,000-row batch).
        blobs = raw.view(f"V{raw.shape[1] * raw.itemsize}").ravel().tolist()
        if self.plain:
            rows: list[tuple[Any, ...]] = list(
                zip(repeat(self.ns, n), labels.tolist(), keys.tolist(), blobs, strict=True)
            )
            sql = _UPSERT_SQL
        else:
            rids = repeat(None, n) if self.schema.id_kind == IdKind.INT else records.id_values()
            more: Any = repeat(None, n)
            if len(self.schema.vectors) > 1:
                parts = [
                    np.ascontiguousarray(records.raw_vectors(v.name), _dtype(v.dtype)).view(
                        np.uint8
                    )
                    for v in self.schema.vectors[1:]
                ]
                joined = np.ascontiguousarray(np.concatenate(parts, axis=1))
                more = joined.view(f"V{joined.shape[1]}").ravel().tolist()
            rows = list(
                zip(
                    repeat(self.ns, n),
                    labels.tolist(),
                    keys.tolist(),
                    blobs,
                    rids,
                    more,
                    encode_payload(records),
                    strict=False,
                )
            )
            sql = _UPSERT_RECORDS_SQL
        if self.engine.dialect.name != "sqlite":
            between_turns = None  # a database of concurrent writers: no turns
        self._in_turns(n, lambda at, stop: self._insert(sql, rows[at:stop]), between_turns)
        return n

    @staticmethod
    def _in_turns(n: int, put: Callable[[int, int], object], between_turns: Turns | None) -> None:
        """``put(at, stop)`` the rows of a batch of ``n``: all at once, or with
        ``between_turns`` in turns of about ``TURN_SECONDS``, the call made between them."""
        if between_turns is None:
            put(0, n)
            return
        at, size = 0, FIRST_TURN_ROWS
        while at < n:
            stop = min(n, at + size)
            began = time.perf_counter()
            put(at, stop)
            spent = time.perf_counter() - began
            done, at = stop - at, stop
            if at < n:
                between_turns(done)
                # The next turn sized from this one's pace (a commit's cost included).
                size = max(MIN_TURN_ROWS, int(done * TURN_SECONDS / max(spent, 1e-4)))

    def _insert(self, sql: str, rows: list[tuple[Any, ...]] | tuple[Any, ...]) -> int:
        """``sql`` (``?`` marks) in one transaction: run once with ``rows`` as its parameters
        (a tuple), or once per row of them (a list). The rows it wrote."""
        with begin(self.engine) as conn:
            # Straight to the driver: building SQLAlchemy parameter dicts per row cost more
            # than the insert itself.
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            return int(conn.exec_driver_sql(sql.replace("?", mark), rows).rowcount)

    def _labels_of(self, ids: Any) -> Ids:
        if self.schema.id_kind == IdKind.INT:
            return (
                np.asarray(ids, dtype=np.int64)
                if not isinstance(ids, pa.Array)
                else (np.asarray(ids.to_numpy(zero_copy_only=False), np.int64))
            )
        return self.labels_of(ids)

    def delete(self, ids: Ids | pa.Array) -> int:
        self._writes()
        labels = self._labels_of(ids)
        if labels.size == 0:
            return 0
        with begin(self.engine) as conn:
            result = conn.execute(
                vectors.delete().where(
                    (vectors.c.ns == self.ns) & vectors.c.id.in_(labels.tolist())
                )
            )
        return int(result.rowcount)

    def count(self, shard: ShardRef | None = None) -> int:
        q = select(func.count()).select_from(vectors).where(vectors.c.ns == self.ns)
        if shard is not None:
            col = vectors.c.h if shard.by == "hash" else vectors.c.id
            q = q.where((col >= shard.lo) & (col < shard.hi))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def id_quantiles(self, parts: int) -> list[int]:
        """``parts - 1`` strictly increasing ids splitting the scope into near-equal id ranges."""
        self._integer_ids("range shards")
        sql = text("SELECT id FROM vm_vectors WHERE ns = :ns ORDER BY id LIMIT 1 OFFSET :o")
        with self.engine.connect() as conn:

            def id_at(offset: int) -> int | None:
                row = conn.execute(sql, {"ns": self.ns, "o": offset}).first()
                return None if row is None else int(row[0])

            return increasing_bounds(id_at, self.count(), parts)

    def fetch_records(self, ids: pa.Array | Any) -> Records:
        """The records with these ids that exist, in label order."""
        return self._by_labels(self._labels_of(ids))

    def fetch_labels(self, labels: Ids) -> tuple[Ids, Vectors]:
        """The records with these labels that exist, in label order (the table's key)."""
        found = self._by_labels(np.asarray(labels, np.int64))
        return found.labels, found.vectors()

    def _by_labels(self, labels: Ids) -> Records:
        labels = np.unique(labels)
        rows: list[tuple[Any, ...]] = []
        for at in range(0, len(labels), 10_000):
            part = labels[at : at + 10_000].tolist()
            if not part:
                continue
            marks = ",".join("?" * len(part))
            rows += self._rows(
                f"SELECT {self._columns()} FROM vm_vectors WHERE ns = ? AND id IN ({marks}) "
                "ORDER BY id",
                [self.ns, *part],
            )
        if not rows:
            return Records.empty(self.schema)
        return self._records(rows)[0]

    def inventory(self, samples: int = 3) -> Inventory:
        """Records, schema and a few of them (the built-in store keeps no index of its own)."""
        return self._inventory(
            str(self.scope),
            samples,
            indexes={},
            payload_indexes={},
            notes=["the built-in store keeps no index: a version's indexes are artifacts"],
        )


def drop_namespace(url: str, scope: Scope, access: DatabaseAccess | None = None) -> int:
    """Delete a whole version's records (used only for explicit cleanup, never on rollback);
    ``access`` carries the password reference and TLS options of a database server. The
    records deleted: none while other namespaces read them (the namespace alone goes; an
    owner stays as a retired row until the last of its readers goes, and then with it)."""
    engine = engine_for(url, access)
    _prepare(engine)
    with begin(engine) as conn:
        row = conn.execute(
            select(namespaces.c.ns, namespaces.c.records_ns).where(
                (namespaces.c.tenant == scope.tenant)
                & (namespaces.c.collection == scope.collection)
                & (namespaces.c.version == scope.version)
                & namespaces.c.retired.is_(None)
            )
        ).first()
        if row is None:
            return 0
        own, held = int(row[0]), int(row[1]) if row[1] is not None else int(row[0])
        if _readers(conn, held, besides=own):
            if row[1] is None:  # the owner: kept, retired, so that its number stays taken
                conn.execute(namespaces.update().where(namespaces.c.ns == own).values(retired=1))
            else:
                conn.execute(namespaces.delete().where(namespaces.c.ns == own))
            return 0
        n = conn.execute(vectors.delete().where(vectors.c.ns == held)).rowcount
        conn.execute(namespaces.delete().where(namespaces.c.ns.in_([own, held])))
    return int(n)


def _readers(conn: Any, held: int, besides: int) -> int:
    """How many namespaces other than ``besides`` read the records of namespace ``held`` (a
    retired owner does not count)."""
    query = (
        select(func.count())
        .select_from(namespaces)
        .where(
            ((namespaces.c.ns == held) | (namespaces.c.records_ns == held))
            & (namespaces.c.ns != besides)
            & namespaces.c.retired.is_(None)
        )
    )
    return int(conn.execute(query).scalar_one())


def other_readers(store: BuiltinStore) -> int:
    """How many other versions read the records ``store`` reads (dropping it frees none of
    them while there are any)."""
    own = select(namespaces.c.ns).where(
        (namespaces.c.tenant == store.scope.tenant)
        & (namespaces.c.collection == store.scope.collection)
        & (namespaces.c.version == store.scope.version)
    )
    with store.engine.connect() as conn:
        found = conn.execute(own).scalar_one_or_none()
        return 0 if found is None else _readers(conn, store.ns, besides=int(found))
