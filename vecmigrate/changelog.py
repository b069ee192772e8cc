"""The change log: every write through the router, with a sequence number, in the catalog.

An online migration copies a snapshot while the collection keeps taking writes. Dual-write sends
each write to the old and the new version, but the backfill can still overwrite a newer record
with the older value it read before the write (and bring a deleted one back). The log closes that
gap: the migration notes the log's head before dual-write starts (the watermark), and after the
backfill it replays everything after the watermark onto the target, in order, the last write of
each id winning and deletes as tombstones. The router also uses the log to see writes an index
artifact does not hold yet (see ``vecmigrate.routing``).

Appends take the log's write lock (SQLite's single writer; an exclusive table lock on
PostgreSQL), so sequence numbers commit in order and a reader never skips one that commits late.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    func,
    select,
    text,
)

from vecmigrate.catalog import Catalog, metadata, now
from vecmigrate.indexes import Ids, Vectors
from vecmigrate.sql import begin, once_per_engine

changes = Table(
    "change_log",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(64), nullable=False),
    Column("collection", String(64), nullable=False),
    Column("id", BigInteger, nullable=False),
    Column("op", String(8), nullable=False),
    # float32 little-endian; NULL for a delete.
    Column("vector", LargeBinary),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("change_log_by_collection", "tenant", "collection", "seq"),
)

# Where each index artifact's snapshot stands in the log: writes after it are not in the index.
index_positions = Table(
    "index_log_positions",
    metadata,
    Column("index_id", String(200), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

UPSERT = "upsert"
DELETE = "delete"


@dataclass(frozen=True)
class Changes:
    """A run of log entries, oldest first."""

    seqs: npt.NDArray[np.int64]
    ids: Ids
    ops: list[str]
    vectors: list[bytes | None]

    @property
    def last_seq(self) -> int:
        return int(self.seqs[-1]) if len(self.seqs) else 0

    def __len__(self) -> int:
        return len(self.ops)

    def net(self, dimension: int) -> tuple[Ids, Vectors, Ids]:
        """The effect of these entries: ids to upsert with their vectors, and ids to delete.

        Later entries win over earlier ones for the same id, so a delete after an upsert is a
        delete, and an upsert after a delete brings the record back.
        """
        last: dict[int, int] = {}
        for i, record_id in enumerate(self.ids.tolist()):
            last[record_id] = i
        up_ids, up_vecs, gone = [], [], []
        for record_id, i in last.items():
            if self.ops[i] == DELETE:
                gone.append(record_id)
            else:
                up_ids.append(record_id)
                blob = self.vectors[i]
                assert blob is not None
                up_vecs.append(np.frombuffer(blob, dtype="<f4"))
        vectors = (
            np.vstack(up_vecs).astype(np.float32)
            if up_vecs
            else np.empty((0, dimension), np.float32)
        )
        return np.asarray(up_ids, np.int64), vectors, np.asarray(gone, np.int64)


class ChangeLog:
    """The change log in a catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine = catalog.engine
        once_per_engine(
            self.engine,
            "change-log",
            lambda: metadata.create_all(self.engine, tables=[changes, index_positions]),
        )

    def append(
        self, tenant: str, collection: str, op: str, ids: Ids, vectors: Vectors | None = None
    ) -> int:
        """Log one write (many ids) and return the sequence number of its last entry."""
        if op not in (UPSERT, DELETE):
            raise ValueError(f"unknown change {op!r}")
        at = now()
        raw = None if vectors is None else np.ascontiguousarray(vectors, dtype="<f4")
        rows = [
            {
                "tenant": tenant,
                "collection": collection,
                "id": int(record_id),
                "op": op,
                "vector": None if raw is None else raw[i].tobytes(),
                "at": at,
            }
            for i, record_id in enumerate(np.asarray(ids).tolist())
        ]
        if not rows:
            return self.head(tenant, collection)
        with begin(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE change_log IN EXCLUSIVE MODE"))
            conn.execute(changes.insert(), rows)
            last = conn.execute(
                select(func.max(changes.c.seq)).where(
                    (changes.c.tenant == tenant) & (changes.c.collection == collection)
                )
            ).scalar_one()
        return int(last)

    def head(self, tenant: str, collection: str) -> int:
        """The newest sequence number of a collection's log (0 when empty)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.max(changes.c.seq)).where(
                    (changes.c.tenant == tenant) & (changes.c.collection == collection)
                )
            ).scalar_one()
        return int(value or 0)

    def read(self, tenant: str, collection: str, after: int, limit: int = 10_000) -> Changes:
        """Entries after sequence number ``after``, oldest first, at most ``limit``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(changes.c.seq, changes.c.id, changes.c.op, changes.c.vector)
                .where(
                    (changes.c.tenant == tenant)
                    & (changes.c.collection == collection)
                    & (changes.c.seq > after)
                )
                .order_by(changes.c.seq)
                .limit(limit)
            ).all()
        return Changes(
            seqs=np.asarray([r[0] for r in rows], np.int64),
            ids=np.asarray([r[1] for r in rows], np.int64),
            ops=[r[2] for r in rows],
            vectors=[r[3] for r in rows],
        )

    def changed_ids(self, tenant: str, collection: str, after: int) -> Ids:
        """Distinct ids written (or deleted) after sequence number ``after``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(changes.c.id)
                .where(
                    (changes.c.tenant == tenant)
                    & (changes.c.collection == collection)
                    & (changes.c.seq > after)
                )
                .distinct()
            ).all()
        return np.asarray([r[0] for r in rows], np.int64)

    def set_index_position(self, index_id: str, seq: int) -> None:
        """Record that index ``index_id`` holds the writes up to log position ``seq``.

        Use the head read *before* the index's data was read: later writes may be missing.
        """
        with begin(self.engine) as conn:
            exists = conn.execute(
                select(index_positions.c.seq).where(index_positions.c.index_id == index_id)
            ).first()
            if exists is None:
                conn.execute(index_positions.insert().values(index_id=index_id, seq=seq))
            elif seq < exists[0]:
                conn.execute(
                    index_positions.update()
                    .where(index_positions.c.index_id == index_id)
                    .values(seq=seq)
                )

    def index_position(self, index_id: str) -> int:
        """The log position index ``index_id`` is current to (0: nothing known, overlay all)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(index_positions.c.seq).where(index_positions.c.index_id == index_id)
            ).first()
        return int(row[0]) if row is not None else 0

    def count_after(self, tenant: str, collection: str, after: int) -> int:
        """How many entries of a collection come after sequence number ``after``."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        (changes.c.tenant == tenant)
                        & (changes.c.collection == collection)
                        & (changes.c.seq > after)
                    )
                ).scalar_one()
            )
