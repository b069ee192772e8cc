"""The shard journal: where every shard of a migration stands, kept in the catalog.

Temporal's heartbeats are throttled (the SDK sends at most one per 80 % of the heartbeat
timeout), so a cursor read back from a heartbeat can be many batches old. The journal is written
before every batch instead, so a copy resumes from the start of the one batch that may not have
committed: a crash re-copies at most one batch, whatever the heartbeat interval.

It also keeps the per-shard outcomes that must not ride in workflow payloads when there are
thousands of shards (index artifacts and validation profiles), the counters the chaos test
checks (attempts, vectors handed to the target over all attempts), and the migration's control
row (pause flag and throttle), which running copies read before every batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.engine import Connection

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import CatalogTables, metadata, now
from vecmigrate.catalog.engines import begin, grouped
from vecmigrate.model.tasks import Cursor
from vecmigrate.records.checksums import RecordChecksum


def shard_key() -> tuple[Column[str], Column[int]]:
    """The migration and shard a row is about: the primary key of the per-shard tables."""
    return (
        Column("migration_id", String(200), primary_key=True),
        Column("shard", Integer, primary_key=True),
    )


def stream_columns() -> tuple[Column[Any], ...]:
    """A shard's streamed validation state (a :class:`StreamRow`): the profiles' state, the
    running exact search's distances and ids, and the read-back sample (labels, then hashes,
    8 bytes each)."""
    return (
        Column("state", JSON, nullable=False),
        Column("distances", LargeBinary),
        Column("ids", LargeBinary),
        Column("sample", LargeBinary),
    )


shard_work = Table(
    "shard_work",
    metadata,
    *shard_key(),
    # Resume point: the copy continues after (cursor_key, cursor_id); NULL means from the start.
    Column("cursor_key", BigInteger),
    Column("cursor_id", BigInteger),
    # Where a scan not ordered by label resumes (see ``Cursor.token``).
    Column("cursor_token", Text),
    # Vectors copied up to the cursor and the running checksum of them (sum kept as text: it
    # is an unsigned 64-bit number).
    Column("copied", BigInteger, nullable=False, default=0),
    Column("sum_count", BigInteger, nullable=False, default=0),
    Column("sum_total", String(20), nullable=False, default="0"),
    # Vectors handed to the target over every attempt; minus ``copied``, what was re-copied.
    Column("handed", BigInteger, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("copy_result", JSON),
    Column("artifact", JSON),
    Column("check_result", JSON),
    Column("check_round", Integer),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

controls = Table(
    "migration_controls",
    metadata,
    Column("migration_id", String(200), primary_key=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("max_vectors_per_second", Float),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # How far the catch-up has replayed the change log onto the target.
    Column("catchup_seq", BigInteger),
)


# The recall gate's ground truth, per shard: each shard check's read of the target also runs the
# exact search of the gate's queries, so the figures need no second read. Kept here, not in
# payloads (queries x k distances and ids per shard), and keyed by validation round and by the
# digest of the queries, so a truth is only ever used for the queries it answers.
gate_truths = Table(
    "gate_truths",
    metadata,
    *shard_key(),
    Column("round", Integer, nullable=False),
    Column("queries_digest", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("k", Integer, nullable=False),
    Column("distances", LargeBinary, nullable=False),
    Column("ids", LargeBinary, nullable=False),
)

# The gate's query sample, drawn once before the copy (see ``vecmigrate.validation.stream``):
# the copy searches it exactly as it writes, so it must not change under it. Ids and vectors
# are blobs here, never in payloads; keyed by migration and spec hash.
gate_samples = Table(
    "gate_samples",
    metadata,
    Column("migration_id", String(200), primary_key=True),
    Column("spec_hash", String(64), primary_key=True),
    Column("meta", JSON, nullable=False),  # kind, ask, rows, dimensions, per-shard counts
    Column("ids", LargeBinary),  # int64 labels; NULL for a recorded query log
    Column("source", LargeBinary, nullable=False),  # float32 rows, the source's space
    Column("target", LargeBinary, nullable=False),  # float32 rows, the target's space
)

# What a shard's copy has seen so far, kept to match its cursor: the profiles of both sides,
# the read-back sample and the running exact search of the gate's queries. Written in the
# transaction that moves the cursor, so a resumed copy goes on from exactly what was counted.
shard_streams = Table(
    "shard_streams",
    metadata,
    *shard_key(),
    *stream_columns(),
)


# A replayed change's streamed state, written ahead of the write to the target (see
# ``vecmigrate.validation.stream.StreamedReplay``): the shard's state once the write has landed,
# and what the target holds for the records it touches before and after it. The replay
# promotes it to ``shard_streams`` once the write is done; a replay that died in between finds
# it and tells from the target which of the two states is true.
shard_stream_pending = Table(
    "shard_stream_pending",
    metadata,
    *shard_key(),
    *stream_columns(),
    Column("expect", JSON, nullable=False),  # ids, and their hashes before and after
)


@dataclass(frozen=True)
class StreamRow:
    """A shard's streamed validation state as stored, one field per column of
    :func:`stream_columns` (see ``vecmigrate.validation.stream``)."""

    state: dict[str, Any]
    distances: bytes | None
    ids: bytes | None
    sample: bytes | None = None


@dataclass(frozen=True)
class CopyState:
    """Where a shard's copy stands, as the journal last recorded it."""

    cursor: Cursor | None
    copied: int
    written: RecordChecksum
    handed: int
    attempts: int
    result: dict[str, Any] | None

    @property
    def recopied(self) -> int:
        """Vectors handed to the target more than once (at most one batch per crash)."""
        return max(0, self.handed - self.copied)


@dataclass(frozen=True)
class Control:
    """The operator's live settings for a migration's running copies."""

    paused: bool = False
    max_vectors_per_second: float | None = None


@dataclass(frozen=True)
class Truth:
    """A shard's exact nearest neighbours of the gate queries whose digest is ``digest``: a
    row of ``k`` distances and ids per query."""

    digest: str
    distances: npt.NDArray[np.float32]
    ids: npt.NDArray[np.int64]


def _shard_key(table: Table, migration_id: str, shard: int) -> Any:
    """The where clause of one shard's row of a migration in ``table``."""
    return (table.c.migration_id == migration_id) & (table.c.shard == shard)


def _stream_row(row: Any) -> StreamRow:
    """A shard's streamed state from its row (of ``shard_streams`` or the pending table)."""
    return sql.record(StreamRow, row)


class Journal(CatalogTables):
    """The shard journal and control rows in a catalog's database."""

    part = "journal"

    def _create(self) -> None:
        metadata.create_all(
            self.engine,
            tables=[
                shard_work,
                controls,
                gate_truths,
                gate_samples,
                shard_streams,
                shard_stream_pending,
            ],
        )
        # A catalog made before scans had tokens.
        sql.add_missing_columns(self.engine, "shard_work", {"cursor_token": "TEXT"})

    # -- copy progress ------------------------------------------------------------------------

    def _upsert(
        self,
        migration_id: str,
        shard: int,
        values: dict[str, Any],
        inserted: dict[str, Any] | None = None,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """Set ``values`` on a shard's row, making the row (with ``inserted`` where given) if
        it has none, in one transaction (with what ``also`` writes)."""
        new = {
            "copied": 0,
            "sum_count": 0,
            "sum_total": "0",
            "handed": 0,
            "attempts": 0,
            **(values if inserted is None else inserted),
        }
        sql.upsert(
            self.engine,
            shard_work,
            self._where(migration_id, shard),
            {"migration_id": migration_id, "shard": shard},
            {**values, "updated_at": now()},
            {**new, "updated_at": now()},
            also,
        )

    def _row(self, migration_id: str, shard: int) -> Any:
        return sql.first_row(
            self.engine, select(shard_work).where(self._where(migration_id, shard))
        )

    def _where(self, migration_id: str, shard: int) -> Any:
        return _shard_key(shard_work, migration_id, shard)

    def _update(
        self, migration_id: str, shard: int, stream: StreamRow | None = None, **values: Any
    ) -> None:
        change = (
            update(shard_work)
            .where(self._where(migration_id, shard))
            .values(**values, updated_at=now())
        )

        def write(conn: Connection) -> None:
            conn.execute(change)
            if stream is not None:
                # In the cursor's transaction: the two never disagree, whenever the copy dies.
                self._put_stream(conn, shard_streams, migration_id, shard, stream)

        # Each running copy writes its cursor before every batch: concurrent ones share a
        # commit, and each returns once its own is durable.
        grouped(self.engine, write)

    @staticmethod
    def _progress(cursor: Cursor | None, copied: int, written: RecordChecksum) -> dict[str, Any]:
        return {
            "cursor_key": None if cursor is None else cursor.key,
            "cursor_id": None if cursor is None else cursor.id,
            "cursor_token": None if cursor is None else cursor.token,
            "copied": copied,
            "sum_count": written.count,
            "sum_total": str(written.total),
        }

    @staticmethod
    def _state(row: Any) -> CopyState:
        cursor = (
            Cursor(key=int(row["cursor_key"]), id=int(row["cursor_id"]), token=row["cursor_token"])
            if row["cursor_key"] is not None
            else None
        )
        return CopyState(
            cursor=cursor,
            copied=int(row["copied"]),
            written=RecordChecksum(count=int(row["sum_count"]), total=int(row["sum_total"])),
            handed=int(row["handed"]),
            attempts=int(row["attempts"]),
            result=row["copy_result"],
        )

    def begin_copy(self, migration_id: str, shard: int) -> CopyState:
        """Count a new copy attempt and return where it must resume."""
        self._upsert(migration_id, shard, {"attempts": shard_work.c.attempts + 1}, {"attempts": 1})
        state = self.copy_state(migration_id, shard)
        assert state is not None
        return state

    def copy_state(self, migration_id: str, shard: int) -> CopyState | None:
        """The shard's copy progress, or ``None`` if no copy of it ever began."""
        row = self._row(migration_id, shard)
        return None if row is None else self._state(row)

    def before_batch(
        self,
        migration_id: str,
        shard: int,
        cursor: Cursor | None,
        copied: int,
        written: RecordChecksum,
        batch: int,
        stream: StreamRow | None = None,
    ) -> None:
        """Record the resume point (the start of the batch about to be written) and its size,
        and with ``stream`` the shard's streamed validation state up to that point.

        Called before the batch is written: if the writer dies, the next attempt starts at this
        batch again, and ``handed`` has counted it once per attempt.
        """
        self._update(
            migration_id,
            shard,
            stream,
            **self._progress(cursor, copied, written),
            handed=shard_work.c.handed + batch,
        )

    def finish_copy(
        self,
        migration_id: str,
        shard: int,
        cursor: Cursor | None,
        copied: int,
        written: RecordChecksum,
        result: dict[str, Any],
        stream: StreamRow | None = None,
    ) -> None:
        """Record a finished copy: its end cursor, counts and result (and final stream)."""
        self._update(
            migration_id,
            shard,
            stream,
            **self._progress(cursor, copied, written),
            copy_result=result,
        )

    def stream(self, migration_id: str, shard: int) -> StreamRow | None:
        """The shard's streamed validation state, or None if its copy kept none."""
        row = sql.first_row(
            self.engine,
            select(shard_streams).where(_shard_key(shard_streams, migration_id, shard)),
        )
        return None if row is None else _stream_row(row)

    def set_stream(self, migration_id: str, shard: int, stream: StreamRow) -> None:
        """Replace a shard's streamed state (outside a copy: a replay's, or marked unusable)."""
        with begin(self.engine) as conn:
            self._put_stream(conn, shard_streams, migration_id, shard, stream)

    @staticmethod
    def _put_stream(
        conn: Any,
        table: Table,
        migration_id: str,
        shard: int,
        stream: StreamRow,
        **extra: Any,
    ) -> None:
        key = _shard_key(table, migration_id, shard)
        values = sql.row_values(stream)
        sql.replace_row(conn, table, key, migration_id=migration_id, shard=shard, **values, **extra)

    def set_pending_streams(
        self, migration_id: str, pending: dict[int, tuple[StreamRow, dict[str, Any]]]
    ) -> None:
        """Write ahead, in one transaction, each shard's streamed state as it will be once a
        replayed write lands, with what the target holds before and after it (``expect``)."""
        with begin(self.engine) as conn:
            for shard, (stream, expect) in pending.items():
                self._put_stream(
                    conn, shard_stream_pending, migration_id, shard, stream, expect=expect
                )

    def pending_stream(
        self, migration_id: str, shard: int
    ) -> tuple[StreamRow, dict[str, Any]] | None:
        """The state written ahead for a shard and its expectations, or None."""
        row = sql.first_row(
            self.engine,
            select(shard_stream_pending).where(
                _shard_key(shard_stream_pending, migration_id, shard)
            ),
        )
        return None if row is None else (_stream_row(row), row["expect"])

    def settle_pending_streams(
        self, migration_id: str, shards: list[int], promote: bool, spoiled: str = ""
    ) -> None:
        """End the written-ahead states of ``shards`` in one transaction: ``promote`` makes
        each the shard's state (the write landed), else they are dropped (it did not); with
        ``spoiled`` the shard's state is marked unusable instead, saying why."""
        with begin(self.engine) as conn:
            for shard in shards:
                key = _shard_key(shard_stream_pending, migration_id, shard)
                row = conn.execute(select(shard_stream_pending).where(key)).mappings().first()
                if row is None:
                    continue
                if promote or spoiled:
                    state = dict(row["state"])
                    if spoiled:
                        state["spoiled"] = spoiled
                    stream = _stream_row({**row, "state": state})
                    self._put_stream(conn, shard_streams, migration_id, shard, stream)
                conn.execute(shard_stream_pending.delete().where(key))

    def drop_stream(self, migration_id: str, shard: int) -> None:
        """Forget a shard's streamed state (its copy starts over without one)."""
        with begin(self.engine) as conn:
            for table in (shard_streams, shard_stream_pending):
                conn.execute(table.delete().where(_shard_key(table, migration_id, shard)))

    # -- the gate's fixed query sample ----------------------------------------------------------

    def gate_sample(
        self, migration_id: str, spec_hash: str
    ) -> tuple[dict[str, Any], bytes | None, bytes, bytes] | None:
        """The stored query sample (meta, ids, source rows, target rows), or None."""
        row = sql.first_row(
            self.engine,
            select(gate_samples).where(
                (gate_samples.c.migration_id == migration_id)
                & (gate_samples.c.spec_hash == spec_hash)
            ),
        )
        if row is None:
            return None
        return row["meta"], row["ids"], row["source"], row["target"]

    def set_gate_sample(
        self,
        migration_id: str,
        spec_hash: str,
        meta: dict[str, Any],
        ids: bytes | None,
        source: bytes,
        target: bytes,
    ) -> None:
        """Store the query sample unless one is stored already (the first writer's stays)."""
        sql.insert_ignoring_duplicate(
            self.engine,
            gate_samples.insert().values(
                migration_id=migration_id,
                spec_hash=spec_hash,
                meta=meta,
                ids=ids,
                source=source,
                target=target,
            ),
        )

    def copy_states(self, migration_id: str) -> dict[int, CopyState]:
        """Every shard's copy progress (one query)."""
        rows = sql.all_rows(
            self.engine, select(shard_work).where(shard_work.c.migration_id == migration_id)
        )
        return {int(row["shard"]): self._state(row) for row in rows}

    # -- per-shard outcomes ---------------------------------------------------------------------

    def set_artifact(self, migration_id: str, shard: int, artifact: dict[str, Any]) -> None:
        """Record the index artifact built for a shard."""
        self._upsert(migration_id, shard, {"artifact": artifact})

    def set_check(
        self,
        migration_id: str,
        shard: int,
        round_: int,
        check: dict[str, Any],
        truth: Truth | None = None,
    ) -> None:
        """Record a shard's validation profile for validation round ``round_``, with ``truth``
        its exact nearest neighbours of the gate queries (replacing any) in the same
        transaction."""
        also = None
        if truth is not None:
            also = partial(self._put_truth, migration_id, shard, round_, truth)
        self._upsert(migration_id, shard, {"check_result": check, "check_round": round_}, also=also)

    def set_truth(self, migration_id: str, shard: int, round_: int, truth: Truth) -> None:
        """Record a shard's exact nearest neighbours of the gate queries (replacing any)."""
        with begin(self.engine) as conn:
            self._put_truth(migration_id, shard, round_, truth, conn)

    @staticmethod
    def _put_truth(
        migration_id: str, shard: int, round_: int, truth: Truth, conn: Connection
    ) -> None:
        rows, k = truth.ids.shape
        sql.replace_row(
            conn,
            gate_truths,
            _shard_key(gate_truths, migration_id, shard),
            migration_id=migration_id,
            shard=shard,
            round=round_,
            queries_digest=truth.digest,
            rows=rows,
            k=k,
            distances=np.ascontiguousarray(truth.distances, np.float32).tobytes(),
            ids=np.ascontiguousarray(truth.ids, np.int64).tobytes(),
        )

    def truths(
        self, migration_id: str, round_: int, digest: str, shards: list[int]
    ) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] | None:
        """Every listed shard's ground truth for these queries in this round; None if any is
        missing (the figures then search the target themselves)."""
        rows = sql.all_rows(
            self.engine,
            select(gate_truths).where(
                (gate_truths.c.migration_id == migration_id)
                & (gate_truths.c.round == round_)
                & (gate_truths.c.queries_digest == digest)
            ),
        )
        found = {int(r["shard"]): r for r in rows}
        if any(s not in found for s in shards):
            return None
        out = []
        for s in shards:
            r = found[s]
            shape = (r["rows"], r["k"])
            d = np.frombuffer(r["distances"], np.float32).reshape(shape)
            i = np.frombuffer(r["ids"], np.int64).reshape(shape)
            out.append((d, i))
        return out

    def outcomes(self, migration_id: str, column: str) -> dict[int, Any]:
        """``artifact``, ``check_result``, ``check_round`` or ``copy_result`` of every shard that
        has one."""
        col = shard_work.c[column]
        rows = sql.all_rows(
            self.engine,
            select(shard_work.c.shard, col).where(
                (shard_work.c.migration_id == migration_id) & col.is_not(None)
            ),
        )
        return {int(r["shard"]): r[column] for r in rows}

    def check_rounds(self, migration_id: str) -> dict[int, int]:
        """The validation round each shard's stored profile belongs to."""
        return {s: int(r) for s, r in self.outcomes(migration_id, "check_round").items()}

    # -- control ------------------------------------------------------------------------------

    def control(self, migration_id: str) -> Control:
        """Pause flag and throttle of a migration (defaults when never set)."""
        row = sql.first_row(
            self.engine, select(controls).where(controls.c.migration_id == migration_id)
        )
        if row is None:
            return Control()
        return Control(bool(row["paused"]), row["max_vectors_per_second"])

    def set_control(
        self, migration_id: str, *, paused: bool, max_vectors_per_second: float | None
    ) -> Control:
        """Set both live settings at once (the workflow always sends its whole view)."""
        values = {
            "paused": paused,
            "max_vectors_per_second": max_vectors_per_second,
            "updated_at": now(),
        }
        sql.upsert(
            self.engine,
            controls,
            controls.c.migration_id == migration_id,
            {"migration_id": migration_id},
            values,
        )
        return Control(paused, max_vectors_per_second)

    def catchup_position(self, migration_id: str) -> int:
        """How far the catch-up replayed the change log (0 if it never ran)."""
        row = sql.first_row(
            self.engine,
            select(controls.c.catchup_seq).where(controls.c.migration_id == migration_id),
        )
        return int(row["catchup_seq"]) if row is not None and row["catchup_seq"] is not None else 0

    def set_catchup_position(self, migration_id: str, seq: int) -> None:
        """Record the catch-up's position (a control row is made if there is none)."""
        with begin(self.engine) as conn:
            changed = conn.execute(
                update(controls)
                .where(controls.c.migration_id == migration_id)
                .values(catchup_seq=seq, updated_at=now())
            ).rowcount
        if not changed:
            self.set_control(migration_id, paused=False, max_vectors_per_second=None)
            self.set_catchup_position(migration_id, seq)
