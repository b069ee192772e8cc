"""The change log: every write through the router, with a sequence number, in the catalog.

An online migration copies a snapshot while the collection keeps taking writes. Dual-write sends
each write to the old and the new version, but the backfill can still overwrite a newer record
with the older value it read before the write (and bring a deleted one back). The log closes that
gap: the migration notes the log's head before dual-write starts (the watermark), and after the
backfill it replays everything after the watermark onto the target, in order, the last write of
each id winning and deletes as tombstones.

The log is also how every router process keeps the indexes it serves current: an index artifact
holds the writes up to its log position, and each process applies the entries after it, in order,
to its in-memory copy (``vecmigrate.indexes.live``), so all of them agree on what the index holds.
A compaction folds the entries into a new artifact with a later position (``index_compactions``),
which bounds what a process applies when it loads one and what it lays over an index that cannot
take a write in place.

Appends take the log's write lock (SQLite's single writer; an exclusive table lock on
PostgreSQL), so sequence numbers commit in order and a reader never skips one that commits late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    func,
    select,
    text,
)

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import (
    Catalog,
    CatalogTables,
    metadata,
    now,
    scope_columns,
    sequence_key,
)
from vecmigrate.catalog.documents import Documents, delete_texts, write_texts
from vecmigrate.catalog.engines import begin
from vecmigrate.errors import DataError
from vecmigrate.records.vectors import Ids, Vectors

changes = Table(
    "change_log",
    metadata,
    sequence_key("seq"),
    *scope_columns(primary_key=False),
    Column("id", BigInteger, nullable=False),
    Column("op", String(8), nullable=False),
    # float32 little-endian, in the space of the version serving reads when it was written;
    # NULL for a delete, or for a text write to a collection whose reads need a missing model.
    Column("vector", LargeBinary),
    # The record's source text, when the write carried one (re-embedding replays from it).
    Column("text", Text),
    # Which model's space ``vector`` is in (``model_id@model_version`` of the version serving
    # reads when it was written): a version of another model cannot take the vector as it is.
    Column("space", String(300)),
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

# Artifacts a compaction wrote for an index version: the same index with the log's entries up to
# ``seq`` folded in. Routers load the newest; the index version and its first artifacts stay as
# the migration registered them (gates and the ledger refer to those).
index_compactions = Table(
    "index_compactions",
    metadata,
    Column("index_id", String(200), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("artifacts", JSON, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
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
    texts: list[str | None]
    # The model space of each entry's vector (None: written before the log recorded it).
    spaces: list[str | None] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return int(self.seqs[-1]) if len(self.seqs) else 0

    def __len__(self) -> int:
        return len(self.ops)

    def first(self, n: int) -> Changes:
        """The oldest ``n`` entries (all of them, the same object, when there are no more)."""
        if n >= len(self):
            return self
        return self._take(np.arange(n))

    def among(self, ids: Ids) -> Changes:
        """The entries of the records ``ids`` names, oldest first."""
        keep = np.flatnonzero(np.isin(self.ids, ids))
        return self if len(keep) == len(self) else self._take(keep)

    def _take(self, rows: npt.NDArray[np.intp]) -> Changes:
        """The entries at positions ``rows``, in that order."""
        at = rows.tolist()
        return Changes(
            seqs=self.seqs[rows],
            ids=self.ids[rows],
            ops=[self.ops[i] for i in at],
            vectors=[self.vectors[i] for i in at],
            texts=[self.texts[i] for i in at],
            spaces=[self.spaces[i] for i in at] if self.spaces else [],
        )

    def _last(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for i, record_id in enumerate(self.ids.tolist()):
            last[record_id] = i
        return last

    def net(self, dimension: int) -> tuple[Ids, Vectors, Ids]:
        """The effect of these entries: ids to upsert with their vectors, and ids to delete.

        Later entries win over earlier ones for the same id, so a delete after an upsert is a
        delete, and an upsert after a delete brings the record back.
        """
        up_ids, up_vecs, gone = [], [], []
        for record_id, i in self._last().items():
            if self.ops[i] == DELETE:
                gone.append(record_id)
            else:
                up_ids.append(record_id)
                blob = self.vectors[i]
                if blob is None:
                    raise DataError(
                        f"change {int(self.seqs[i])} (id {record_id}) carries text but no "
                        "vector; replay it by re-embedding its text"
                    )
                up_vecs.append(np.frombuffer(blob, dtype="<f4"))
        vectors = (
            np.vstack(up_vecs).astype(np.float32)
            if up_vecs
            else np.empty((0, dimension), np.float32)
        )
        return np.asarray(up_ids, np.int64), vectors, np.asarray(gone, np.int64)

    def net_texts(self) -> tuple[Ids, list[str], Ids]:
        """Like :meth:`net`, with each upserted record's text instead of its vector.

        Raises:
            DataError: an upsert that carried no text (written as a bare vector).
        """
        up_ids, texts, gone = [], [], []
        for record_id, i in self._last().items():
            if self.ops[i] == DELETE:
                gone.append(record_id)
                continue
            t = self.texts[i]
            if t is None:
                raise DataError(
                    f"change {int(self.seqs[i])} wrote id {record_id} as a bare vector, without "
                    "text: a re-embedding migration needs every write to carry its text"
                )
            up_ids.append(record_id)
            texts.append(t)
        return np.asarray(up_ids, np.int64), texts, np.asarray(gone, np.int64)


class ChangeLog(CatalogTables):
    """The change log in a catalog's database."""

    part = "change-log"

    def __init__(self, catalog: Catalog) -> None:
        Documents(catalog)
        super().__init__(catalog)

    def _create(self) -> None:
        metadata.create_all(self.engine, tables=[changes, index_positions, index_compactions])
        # Columns added after the first release: a catalog made before gains them on open.
        sql.add_missing_columns(
            self.engine, "change_log", {"text": "TEXT", "space": "VARCHAR(300)"}
        )

    def append(
        self,
        tenant: str,
        collection: str,
        op: str,
        ids: Ids,
        vectors: Vectors | None = None,
        texts: list[str] | None = None,
        space: str | None = None,
    ) -> int:
        """Log one write (many ids) and return the sequence number of its last entry.

        With ``texts``, the records' source texts are stored too (in the entries and in the
        collection's documents, in the same transaction); a delete removes them. ``space``
        names the model whose space ``vectors`` are in. A write's entries are numbered
        consecutively (appends hold the log's write lock).
        """
        if op not in (UPSERT, DELETE):
            raise ValueError(f"unknown change {op!r}")
        at = now()
        raw = None if vectors is None else np.ascontiguousarray(vectors, dtype="<f4")
        id_list = np.asarray(ids).tolist()
        if texts is not None and len(texts) != len(id_list):
            raise DataError(f"{len(id_list)} ids but {len(texts)} texts; pass one text per id")
        rows = [
            {
                "tenant": tenant,
                "collection": collection,
                "id": int(record_id),
                "op": op,
                "vector": None if raw is None else raw[i].tobytes(),
                "text": None if texts is None else texts[i],
                "space": None if raw is None else space,
                "at": at,
            }
            for i, record_id in enumerate(id_list)
        ]
        if not rows:
            return self.head(tenant, collection)
        with begin(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE change_log IN EXCLUSIVE MODE"))
            conn.execute(changes.insert(), rows)
            if op == DELETE:
                delete_texts(conn, tenant, collection, np.asarray(id_list, np.int64))
            elif texts is not None:
                write_texts(conn, tenant, collection, np.asarray(id_list, np.int64), texts)
            last = conn.execute(
                select(func.max(changes.c.seq)).where(sql.in_scope(changes, tenant, collection))
            ).scalar_one()
        return int(last)

    def head(self, tenant: str, collection: str, before: datetime | None = None) -> int:
        """The newest sequence number of a collection's log (0 when empty); with ``before``,
        the newest of the entries written before that time."""
        where = sql.in_scope(changes, tenant, collection)
        if before is not None:
            where = where & (changes.c.at < before)
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(changes.c.seq)).where(where)).scalar_one()
        return int(value or 0)

    def read(self, tenant: str, collection: str, after: int, limit: int = 10_000) -> Changes:
        """Entries after sequence number ``after``, oldest first, at most ``limit``."""
        rows = sql.all_rows(
            self.engine,
            select(
                changes.c.seq,
                changes.c.id,
                changes.c.op,
                changes.c.vector,
                changes.c.text,
                changes.c.space,
            )
            .where(sql.in_scope(changes, tenant, collection) & (changes.c.seq > after))
            .order_by(changes.c.seq)
            .limit(limit),
        )
        return Changes(
            seqs=np.asarray([r["seq"] for r in rows], np.int64),
            ids=np.asarray([r["id"] for r in rows], np.int64),
            ops=[r["op"] for r in rows],
            vectors=[r["vector"] for r in rows],
            texts=[r["text"] for r in rows],
            spaces=[r["space"] for r in rows],
        )

    def changed_ids(self, tenant: str, collection: str, after: int) -> Ids:
        """Distinct ids written (or deleted) after sequence number ``after``."""
        rows = sql.all_rows(
            self.engine,
            select(changes.c.id)
            .where(sql.in_scope(changes, tenant, collection) & (changes.c.seq > after))
            .distinct(),
        )
        return np.asarray([r["id"] for r in rows], np.int64)

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
        row = sql.first_row(
            self.engine,
            select(index_positions.c.seq).where(index_positions.c.index_id == index_id),
        )
        return int(row["seq"]) if row is not None else 0

    def count_after(self, tenant: str, collection: str, after: int) -> int:
        """How many entries of a collection come after sequence number ``after``."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        sql.in_scope(changes, tenant, collection) & (changes.c.seq > after)
                    )
                ).scalar_one()
            )

    def deleted(self, tenant: str, collection: str, ids: Ids) -> Ids:
        """Those of ``ids`` whose latest log entry is a delete."""
        wanted = np.asarray(ids, np.int64).tolist()
        latest: dict[int, tuple[int, str]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 10_000):
                rows = conn.execute(
                    select(changes.c.id, changes.c.seq, changes.c.op).where(
                        sql.in_scope(changes, tenant, collection)
                        & changes.c.id.in_(wanted[start : start + 10_000])
                    )
                ).all()
                for record_id, seq, op in rows:
                    if record_id not in latest or latest[record_id][0] < seq:
                        latest[record_id] = (seq, op)
        return np.asarray([i for i, (_, op) in latest.items() if op == DELETE], np.int64)

    def compact(self, tenant: str, collection: str, upto: int) -> int:
        """Remove the entries up to ``upto`` that a later entry of the same id supersedes;
        returns how many went.

        Every reader of the log takes its net effect (the last write of each id wins, deletes
        are tombstones), so an entry superseded by a later one changes nothing for any reader,
        wherever it starts: only the newest entry of each id matters.
        """
        where = sql.in_scope(changes, tenant, collection)
        newest = select(func.max(changes.c.seq)).where(where).group_by(changes.c.id)
        with begin(self.engine) as conn:
            n = conn.execute(
                changes.delete().where(
                    where & (changes.c.seq <= upto) & changes.c.seq.not_in(newest)
                )
            ).rowcount
        return int(n or 0)

    def truncate(self, tenant: str, collection: str, through: int) -> int:
        """Remove a collection's entries up to ``through``, keeping its newest entry (the head
        stays where it is, and sequence numbers are never reused); returns how many went."""
        where = sql.in_scope(changes, tenant, collection)
        head = self.head(tenant, collection)
        with begin(self.engine) as conn:
            n = conn.execute(
                changes.delete().where(where & (changes.c.seq <= min(through, head - 1)))
            ).rowcount
        return int(n or 0)

    def size(self, tenant: str, collection: str) -> tuple[int, int]:
        """A collection's entries and their bytes (vectors, texts and about 40 bytes a row)."""
        where = sql.in_scope(changes, tenant, collection)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(func.length(changes.c.vector)), 0),
                    func.coalesce(func.sum(func.length(changes.c.text)), 0),
                ).where(where)
            ).first()
        assert row is not None
        entries = int(row[0])
        return entries, entries * 40 + int(row[1]) + int(row[2])

    # -- compactions ----------------------------------------------------------------------------

    def record_compaction(self, index_id: str, seq: int, artifacts: list[dict[str, Any]]) -> None:
        """Record artifacts that hold index ``index_id`` with the log folded in up to ``seq``
        (idempotent: a retried compaction to the same position keeps the first record)."""
        with begin(self.engine) as conn:
            exists = conn.execute(
                select(index_compactions.c.seq).where(
                    (index_compactions.c.index_id == index_id) & (index_compactions.c.seq == seq)
                )
            ).first()
            if exists is None:
                conn.execute(
                    index_compactions.insert().values(
                        index_id=index_id, seq=seq, artifacts=artifacts, at=now()
                    )
                )

    def compacted(self, index_id: str) -> tuple[int, list[dict[str, Any]]] | None:
        """The newest compaction of an index: its log position and artifacts, or None."""
        row = sql.first_row(
            self.engine,
            select(index_compactions.c.seq, index_compactions.c.artifacts)
            .where(index_compactions.c.index_id == index_id)
            .order_by(index_compactions.c.seq.desc())
            .limit(1),
        )
        return None if row is None else (int(row["seq"]), list(row["artifacts"]))

    def compactions(self, index_id: str) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every compaction of an index, oldest first."""
        rows = sql.all_rows(
            self.engine,
            select(index_compactions.c.seq, index_compactions.c.artifacts)
            .where(index_compactions.c.index_id == index_id)
            .order_by(index_compactions.c.seq),
        )
        return [(int(r["seq"]), list(r["artifacts"])) for r in rows]

    def compacted_positions(self, index_ids: list[str]) -> dict[str, int]:
        """The newest compaction's log position of each of ``index_ids`` that has one."""
        if not index_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(index_compactions.c.index_id, func.max(index_compactions.c.seq))
                .where(index_compactions.c.index_id.in_(index_ids))
                .group_by(index_compactions.c.index_id)
            ).all()
        return {r[0]: int(r[1]) for r in rows}
