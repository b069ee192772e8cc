"""The contract every vector store adapter meets."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from vecmigrate.errors import DataError, PreconditionError
from vecmigrate.model.records import Filter, IdKind, RecordSchema
from vecmigrate.model.spec import IndexSpec, Metric
from vecmigrate.model.tasks import Cursor, ShardRef, StableNameSwitch
from vecmigrate.records.batch import Faults, Records
from vecmigrate.records.checksums import RecordChecksum
from vecmigrate.records.filters import evaluate, normalize
from vecmigrate.records.ids import id_array
from vecmigrate.records.screening import Limits
from vecmigrate.records.sharding import HASH_SPACE, hash_key
from vecmigrate.records.vectors import ExactKnn, check_vectors

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
# Called between the turns a single-writer database writes a batch in, with each turn's record
# count (see ``VectorStore.write``).
Turns = Callable[[int], None]


@dataclass(frozen=True)
class Scope:
    """What a store handle may touch: one version of one collection of one tenant."""

    tenant: str
    collection: str
    version: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.collection}@{self.version}"


@dataclass(frozen=True)
class Batch:
    """Records read from a shard, in scan order, and the cursor to resume after them.

    ``faults`` are the records read that no store can hold (null vector, wrong dimension, NaN,
    an id occurring twice): left out of ``records``, named for the quarantine. A batch with
    neither records nor faults means the shard is done.
    """

    records: Records
    next_cursor: Cursor | None
    faults: Faults = field(default_factory=Faults)

    @property
    def ids(self) -> Ids:
        """The records' labels (their ids, for integer ids)."""
        return self.records.labels

    @property
    def vectors(self) -> Vectors:
        """The records' primary vectors as float32 rows."""
        return self.records.vectors()

    @property
    def nbytes(self) -> int:
        """Bytes of the records read (ids, vectors and payload)."""
        return self.records.nbytes

    @property
    def exhausted(self) -> bool:
        """Whether the scan found nothing more in its shard."""
        return not len(self.records) and not len(self.faults)

    def __len__(self) -> int:
        return len(self.records)


# The scope ``vecmigrate inspect`` opens a table or collection with: whichever version it holds,
# read only (every other handle opens exactly one scope).
INSPECTING = Scope("*", "*", "*")


def check_scope(made_for: object, scope: Scope, what: str) -> None:
    """Refuse a table or collection vecmigrate made for another scope.

    Raises:
        PreconditionError: naming both scopes.
    """
    if scope != INSPECTING and made_for != str(scope):
        raise PreconditionError(f"{what} holds {made_for}, not {scope}; name another")


# A shard covering every id: for whole-scope scans.
# Everything, in hash-key order: the order in which stores keep their records together (a hash
# shard is a contiguous range of the built-in store's table), so a whole scan reads sequentially.
WHOLE = ShardRef(index=0, by="hash", lo=0, hi=HASH_SPACE)


@dataclass(frozen=True)
class Inventory:
    """What ``vecmigrate inspect`` reports of a table or collection."""

    engine: str
    name: str
    count: int
    schema: RecordSchema
    # Per vector field: the index on it (kind and parameters), if any.
    indexes: dict[str, dict[str, Any]]
    # Payload fields with an index of their own, and what kind.
    payload_indexes: dict[str, str]
    size_bytes: int | None
    samples: list[dict[str, Any]]
    # Payload fields typed from a sample of records (the engine keeps no schema of them).
    sampled: bool = False
    notes: list[str] = field(default_factory=list)
    # The store reference that reads it as a migration's source.
    store: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class VectorStore(Protocol):
    """A vector store opened for one :class:`Scope`. Every read and write stays inside it."""

    kind: str
    scope: Scope
    dimension: int
    schema: RecordSchema

    @property
    def adopted(self) -> bool:
        """Whether this is an existing table or collection read as it is."""
        ...

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        """Up to ``limit`` records of ``shard`` after ``cursor``, in a stable order."""
        ...

    def iter_shard(
        self, shard: ShardRef, batch_size: int, *, read_ahead: bool = False
    ) -> Iterator[Batch]:
        """Every batch of a shard, in scan order (the next read overlapping with the caller's
        work on this batch, with ``read_ahead``)."""
        ...

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every label of a shard once, batch by batch, in an order of the store's (the vectors
        left unread where the store can)."""
        ...

    def write(self, records: Records, *, between_turns: Turns | None = None) -> int:
        """Insert or replace records by id; running it twice leaves the same store.

        With ``between_turns``, a store whose database takes one writer at a time (the
        built-in store on SQLite) writes the batch in turns of a few milliseconds each and
        calls it with each turn's records between them, so that the writers of other
        processes wait for a turn rather than for the whole batch; the batch is checked in full
        before any of it is written. Stores whose databases take concurrent writers write in
        one go and never call it."""
        ...

    def upsert(self, ids: Ids, vectors: Vectors) -> int:
        """Insert or replace records of integer ids and one vector (no payload) by id."""
        ...

    def delete(self, ids: Ids | pa.Array) -> int:
        """Remove records by id; deleting a missing id is not an error."""
        ...

    def count(self, shard: ShardRef | None = None) -> int:
        """Records in the shard (or the whole scope)."""
        ...

    def checksum(self, shard: ShardRef | None = None) -> str:
        """Order-independent checksum of ids, vectors and payload."""
        ...

    def search(
        self, queries: Vectors, k: int, metric: str = "l2"
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Exact k nearest neighbours (ground truth): distances and labels, -1 padded."""
        ...

    def sample(self, n: int, seed: int = 0) -> tuple[Ids, Vectors]:
        """A deterministic pseudo-random sample of ``n`` records (see :meth:`sample_records`)."""
        ...

    def sample_records(self, n: int, seed: int = 0) -> Records:
        """The ``n`` records whose ids rank first from a seeded point: the same records from
        every adapter holding the same data."""
        ...

    def sample_shards(self, shards: list[ShardRef], n: int, seed: int = 0) -> Records:
        """``n`` records spread over ``shards`` in proportion to their records (see
        :meth:`ScanningStore.sample_shards`)."""
        ...

    def fetch(self, ids: Ids) -> tuple[Ids, Vectors]:
        """The records with these labels that exist, in label order."""
        ...

    def fetch_records(self, ids: pa.Array) -> Records:
        """The records with these ids (as the source has them) that exist."""
        ...

    def fetch_labels(self, labels: Ids) -> tuple[Ids, Vectors]:
        """The records with these labels that exist, in label order, whatever their ids."""
        ...

    def id_quantiles(self, parts: int) -> list[int]:
        """``parts - 1`` increasing ids splitting the scope into near-equal id ranges."""
        ...

    def limits(self) -> Limits:
        """What this store cannot hold (checked per record before a copy writes)."""
        ...

    def matching(self, flt: Filter) -> Ids:
        """Labels of the records whose payload matches ``flt``."""
        ...

    def shard_counts(self, shards: list[ShardRef]) -> dict[int, int]:
        """Records per shard (one pass over a store that keeps no shard keys)."""
        ...

    def inventory(self, samples: int = 3) -> Inventory:
        """What ``vecmigrate inspect`` reports of this store."""
        ...

    def point_name(self, name: str, *, create: bool = True) -> StableNameSwitch:
        """Point the stable name ``name`` (an alias, a view) at this version in one atomic
        step; pointing it where it already points changes nothing. With ``create`` false, a
        name that does not exist is left absent.

        Raises:
            PreconditionError: the store has no stable names, or ``name`` is a table or
                collection of its own (or a view vecmigrate did not make).
        """
        ...

    def name_points_at(self, name: str) -> str | None:
        """The table or collection the stable name ``name`` points at (None: no such name)."""
        ...

    def drop_name(self, name: str) -> bool:
        """Take the stable name ``name`` away if it points at this version (a renamed table
        gets its name back); whether it did.

        Raises:
            PreconditionError: it points at another version (not ours to remove).
        """
        ...


@dataclass(frozen=True)
class NativeQuery:
    """A search through an engine's own index as an adapter runs it: the query vectors (float32),
    how many neighbours, the index's search parameters, the metric, and the payload filter
    normalised against the store's schema (None: no filter)."""

    vectors: npt.NDArray[np.float32]
    k: int
    spec: IndexSpec
    metric: Metric
    flt: Filter | None


# The hits of one query vector, nearest first: the ids as the engine has them, their labels, and
# their distances in our convention.
NativeHits = tuple[list[Any], Ids, list[float]]


class EngineSearch:
    """Search through an engine's own index (Milvus, pgvector, Qdrant): ``native_search`` does it
    and also returns the ids as the engine has them; ``search_native`` is the store protocol's
    form of it. An adapter runs the search itself in ``_native_hits``."""

    schema: RecordSchema

    def native_search(
        self,
        queries: Vectors,
        k: int,
        spec: IndexSpec,
        metric: Metric,
        flt: Filter | None = None,
    ) -> tuple[npt.NDArray[np.float32], Ids, list[list[Any]]]:
        """k nearest neighbours (with a payload filter) through the engine's own index:
        distances in our convention, labels, and the ids as the engine has them (a query with
        fewer than ``k`` hits pads its row with infinite distances and label -1)."""
        q = np.asarray(queries, np.float32)
        normalized = None if flt is None else normalize(flt, self.schema)
        query = NativeQuery(q, k, spec, metric, normalized)
        d = np.full((q.shape[0], k), np.inf, np.float32)
        i = np.full((q.shape[0], k), -1, np.int64)
        found_ids: list[list[Any]] = []
        for row, (ids, labels, distances) in enumerate(self._native_hits(query)):
            found_ids.append(ids)
            i[row, : len(labels)] = labels
            d[row, : len(distances)] = distances
        return d, i, found_ids

    def _native_hits(self, query: NativeQuery) -> Iterable[NativeHits]:
        """The hits of each query vector, in order, as the engine's index finds them."""
        raise NotImplementedError

    def search_native(
        self,
        queries: Vectors,
        k: int,
        spec: IndexSpec,
        metric: Metric,
        flt: Filter | None = None,
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """k nearest neighbours through the engine's index; distances follow our convention."""
        d, i, _ = self.native_search(queries, k, spec, metric, flt)
        return d, i


class ScanningStore:
    """What every adapter gets from its ``scan``: batches, checksums, exact search, samples.

    ``keyed`` stores keep each record's shard key beside it (every store vecmigrate creates):
    a hash shard is a range of an index. An adopted source keeps none (vecmigrate never writes
    to it), so its scans read in id order and keep the rows of the shard.
    """

    kind: str
    scope: Scope
    dimension: int
    schema: RecordSchema
    keyed: bool = True
    # Adopted sources refuse every write unless their store reference allows it.
    writable: bool = True

    def __init__(self, scope: Scope, schema: RecordSchema) -> None:
        self.scope = scope
        self.schema = schema
        self.dimension = schema.primary.dimension

    @property
    def adopted(self) -> bool:
        """Whether this is an existing table or collection read as it is (not made by
        vecmigrate)."""
        return not self.keyed

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        raise NotImplementedError

    def write(self, records: Records, *, between_turns: Turns | None = None) -> int:
        raise NotImplementedError

    def fetch_records(self, ids: pa.Array) -> Records:
        raise NotImplementedError

    def count(self, shard: ShardRef | None = None) -> int:
        raise NotImplementedError

    def limits(self) -> Limits:
        """What this store cannot hold; the default holds everything."""
        return Limits()

    def point_name(self, name: str, *, create: bool = True) -> StableNameSwitch:
        raise PreconditionError(
            f"a {self.kind} store has no stable names (aliases or views): cutover.stable_name "
            "needs Qdrant, Milvus or PostgreSQL"
        )

    def name_points_at(self, name: str) -> str | None:
        raise PreconditionError(f"a {self.kind} store has no stable names (aliases or views)")

    def drop_name(self, name: str) -> bool:
        raise PreconditionError(f"a {self.kind} store has no stable names (aliases or views)")

    def _inventory(
        self,
        name: str,
        samples: int,
        *,
        indexes: dict[str, dict[str, Any]],
        payload_indexes: dict[str, str],
        notes: list[str],
        size_bytes: int | None = None,
        sampled: bool = False,
    ) -> Inventory:
        """The inventory of this store, named ``name``, with what its engine says of it: the
        count, the schema and its first ``samples`` records beside it."""
        return Inventory(
            engine=self.kind,
            name=name,
            count=self.count(),
            schema=self.schema,
            indexes=indexes,
            payload_indexes=payload_indexes,
            size_bytes=size_bytes,
            samples=sample_rows(self.scan(WHOLE, None, samples).records),
            sampled=sampled,
            notes=notes,
        )

    def labels_of(self, ids: list[Any] | pa.Array) -> Ids:
        """The labels of ``ids`` as the engine answered them (ids of this store's kind)."""
        arr = id_array(ids, self.schema.id_kind)
        return Records(self.schema, pa.RecordBatch.from_arrays([arr], names=["id"])).labels

    def add_shard_faults(self, faults: Faults, bad: Faults, shard: ShardRef) -> None:
        """Add to ``faults`` those of ``bad`` whose record belongs to ``shard``: a store that
        reads a shard by filtering its rows counts each fault once, in the shard of its id."""
        for fid, reason, detail in zip(bad.ids, bad.reasons, bad.details, strict=True):
            value: Any = int(fid) if self.schema.id_kind == IdKind.INT else fid
            if in_shard(self.labels_of([value]), shard)[0]:
                faults.add(fid, reason, detail)

    def _writes(self) -> None:
        """Refuse a write to a store that must not change.

        Raises:
            PreconditionError: it is an adopted source that does not allow writes.
        """
        if self.scope == INSPECTING:
            raise PreconditionError(f"{self.scope}: a store opened for inspection is read only")
        if not self.writable:
            raise PreconditionError(
                f"{self.scope} is an adopted source: vecmigrate does not write to it unless its "
                "store reference says writable: true"
            )

    def upsert(self, ids: Ids, vectors: Vectors) -> int:
        """Insert or replace records of integer ids and one vector by id (no payload).

        Raises:
            DataError: wrong shape or dimension, NaN, repeated ids, or this store holds records
                with other ids or a payload.
        """
        ids64, vec32 = check_vectors(ids, vectors, self.dimension, self.scope)
        if self.schema.id_kind != IdKind.INT or len(self.schema.vectors) > 1:
            raise DataError(
                f"{self.scope} holds {self.schema.id_kind} ids and vectors "
                f"{[v.name for v in self.schema.vectors]}; write whole records"
            )
        return self.write(
            Records.build(self.schema, pa.array(ids64), {self.schema.primary.name: vec32})
        )

    def fetch(self, ids: Ids) -> tuple[Ids, Vectors]:
        """The records with these labels that exist, in label order (integer ids)."""
        if self.schema.id_kind != IdKind.INT:
            raise DataError(f"{self.scope} has {self.schema.id_kind} ids; fetch records by id")
        found = self.fetch_records(pa.array(np.unique(np.asarray(ids, np.int64))))
        order = np.argsort(found.labels, kind="stable")
        return found.labels[order], found.vectors()[order]

    def fetch_labels(self, labels: Ids) -> tuple[Ids, Vectors]:
        """The records with these labels that exist, in label order, whatever their ids: by id
        for integer ids, else by reading every record (a store that keeps its records by label
        answers this itself)."""
        if self.schema.id_kind == IdKind.INT:
            return self.fetch(labels)
        wanted = np.unique(np.asarray(labels, np.int64))
        found: list[tuple[Ids, Vectors]] = []
        for b in self.iter_shard(WHOLE, 50_000):
            keep = np.isin(b.records.labels, wanted)
            if keep.any():
                found.append((b.records.labels[keep], b.records.vectors()[keep]))
        if not found:
            return np.empty(0, np.int64), np.empty((0, self.dimension), np.float32)
        ids = np.concatenate([f[0] for f in found])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.concatenate([f[1] for f in found])[order]

    def iter_shard(
        self, shard: ShardRef, batch_size: int, *, read_ahead: bool = False
    ) -> Iterator[Batch]:
        """Every batch of a shard, in scan order.

        With ``read_ahead``, a thread reads the next batch while the caller works on this one:
        for a caller that computes on each batch (a build, a profile with exact search), the
        read and the computation overlap (the drivers and numpy release the GIL).
        """
        if read_ahead:
            yield from self._iter_ahead(shard, batch_size)
            return
        cursor: Cursor | None = None
        while True:
            batch = self.scan(shard, cursor, batch_size)
            if batch.exhausted:
                return
            yield batch
            cursor = batch.next_cursor

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every label of a shard once, in scan order; this default reads the vectors too."""
        for batch in self.iter_shard(shard, batch_size):
            if len(batch):
                yield batch.ids

    def _iter_ahead(self, shard: ShardRef, batch_size: int) -> Iterator[Batch]:
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
            ahead = reader.submit(self.scan, shard, None, batch_size)
            while True:
                batch = ahead.result()
                if batch.exhausted:
                    return
                ahead = reader.submit(self.scan, shard, batch.next_cursor, batch_size)
                yield batch

    def checksum(self, shard: ShardRef | None = None, batch_size: int = 50_000) -> str:
        """Order-independent checksum of ids, vectors and payload (comparable across
        adapters)."""
        acc = RecordChecksum()
        for batch in self.iter_shard(shard or WHOLE, batch_size):
            acc.add_hashes(batch.records.hashes())
        return acc.hexdigest()

    def search(
        self, queries: Vectors, k: int, metric: str = "l2", batch_size: int = 100_000
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Exact search over every record, streamed by batch (bounded memory)."""
        knn = ExactKnn(queries, k, metric)
        for batch in self.iter_shard(WHOLE, batch_size):
            knn.add(batch.ids, batch.vectors)
        return knn.result()

    def id_quantiles(self, parts: int) -> list[int]:
        """``parts - 1`` increasing ids at equal steps, found by scanning ids in order.

        Adapters with a cheaper way (SQL ``OFFSET``) override this.

        Raises:
            PreconditionError: the ids are not integers (range shards need ordered ids).
        """
        self._integer_ids("range shards")
        everything = [b.ids for b in self.iter_shard(WHOLE, 10_000)]
        ids = np.concatenate(everything) if everything else np.empty(0, np.int64)
        ids.sort()
        return increasing_bounds(
            lambda offset: int(ids[offset]) if offset < ids.size else None, int(ids.size), parts
        )

    def shard_counts(self, shards: list[ShardRef]) -> dict[int, int]:
        """Records per shard: a count per shard where the store keeps shard keys, else one
        read of everything (a count per shard would read it once per shard)."""
        if self.keyed or all(s.by == "range" for s in shards):
            return {s.index: self.count(s) for s in shards}
        counts = dict.fromkeys((s.index for s in shards), 0)
        for batch in self.iter_shard(WHOLE, 50_000):
            keys = hash_key(batch.ids)
            for s in shards:
                counts[s.index] += int(((keys >= s.lo) & (keys < s.hi)).sum())
        return counts

    def _integer_ids(self, what: str) -> None:
        if self.schema.id_kind != IdKind.INT:
            raise PreconditionError(
                f"{what} split integer ids; {self.scope} has {self.schema.id_kind} ids: use hash "
                "shards"
            )

    def sample(self, n: int, seed: int = 0) -> tuple[Ids, Vectors]:
        """A deterministic pseudo-random sample (see :meth:`sample_records`)."""
        records = self.sample_records(n, seed)
        return records.labels, records.vectors()

    def sample_records(self, n: int, seed: int = 0) -> Records:
        """The ``n`` records whose shard keys come first from a seeded point of the key ring
        (ties broken by label), in that order: deterministic, spread over the whole id space,
        and the same records from every adapter holding the same data, whatever order its
        scans return them in.

        A keyed store reads a window of the key ring that holds about ``n`` records (widened
        until it does); a store without keys reads everything once, keeping the best ``n``.
        """
        start = int(hash_key(np.array([seed], dtype=np.int64))[0])
        if n <= 0:
            return Records.empty(self.schema)
        kept: Records | None = None
        if self.keyed:
            total = self.count()
            width = min(HASH_SPACE, max(1024, int(HASH_SPACE * min(1.0, 1.5 * n / max(total, 1)))))
            while True:
                parts = [
                    b.records
                    for window in ring_window(start, width)
                    for b in self.iter_shard(window, 50_000)
                ]
                kept = Records.concat(parts, self.schema)
                if len(kept) >= n or width >= HASH_SPACE:
                    break
                width = min(HASH_SPACE, width * 4)
            return _first_on_ring(kept, start, n)
        for batch in self.iter_shard(WHOLE, 50_000):
            both = (
                batch.records
                if kept is None
                else Records.concat([kept, batch.records], self.schema)
            )
            kept = _first_on_ring(both, start, n)
        return kept if kept is not None else Records.empty(self.schema)

    def sample_shards(self, shards: list[ShardRef], n: int, seed: int = 0) -> Records:
        """``n`` records stratified over ``shards``: each shard gives its share of ``n`` in
        proportion to its records (largest remainders, ties to the lower shard), chosen within
        the shard as :meth:`sample_records` chooses (first on the key ring from a seeded point,
        here a point inside the shard's range), in shard order. Deterministic from ``seed``
        and the same records from every adapter holding the same data.

        A keyed store counts each hash shard (beyond :data:`COUNTED_STRATA` shards, shares by
        key range instead) and reads a window of it holding its share; a store without keys
        (or range shards) reads everything once, keeping each shard's first ``n`` records on
        the ring.
        """
        if n <= 0 or not shards:
            return Records.empty(self.schema)
        start = int(hash_key(np.array([seed], dtype=np.int64))[0])
        if self.keyed and all(s.by == "hash" for s in shards):
            if len(shards) <= COUNTED_STRATA:
                counts = self.shard_counts(shards)
            else:
                # Counting thousands of shards on every draw would cost more than the sample:
                # the hash spreads records evenly, so a shard's share of the key space is its
                # share of the records (within about the square root of its count).
                whole = self.count()
                counts = {s.index: whole * (s.hi - s.lo) // HASH_SPACE for s in shards}
            quotas = proportional_quotas(n, [counts[s.index] for s in shards])
            parts = [
                self._window_sample(s, q, _start_in(s, start), counts[s.index])
                for s, q in zip(shards, quotas, strict=True)
                if q
            ]
            return Records.concat(parts, self.schema) if parts else Records.empty(self.schema)
        kept: dict[int, Records] = {}
        sizes = dict.fromkeys((s.index for s in shards), 0)

        def keep(shard: ShardRef, recs: Records) -> None:
            sizes[shard.index] += len(recs)
            if len(recs):
                held = kept.get(shard.index)
                both = recs if held is None else Records.concat([held, recs], self.schema)
                kept[shard.index] = _first_on_ring(both, _start_in(shard, start), n)

        if self.keyed or all(s.by == "range" for s in shards):
            for s in shards:
                for batch in self.iter_shard(s, 50_000):
                    keep(s, batch.records)
        else:
            # One read of everything, each record sent to its shard by a binary search of the
            # shards' key ranges (thousands of shards cost no more than four).
            ranked = sorted(shards, key=lambda s: s.lo)
            los = np.array([s.lo for s in ranked], np.int64)
            his = np.array([s.hi for s in ranked], np.int64)
            for batch in self.iter_shard(WHOLE, 50_000):
                recs = batch.records
                keys = hash_key(recs.labels)
                at = np.searchsorted(los, keys, side="right") - 1
                inside = (at >= 0) & (keys < his[np.clip(at, 0, None)])
                rows = np.flatnonzero(inside)
                rows = rows[np.argsort(at[rows], kind="stable")]
                groups = np.split(rows, np.flatnonzero(np.diff(at[rows])) + 1)
                for group in groups:
                    if len(group):
                        keep(ranked[int(at[group[0]])], recs.take(group))
        if len(shards) > COUNTED_STRATA and all(s.by == "hash" for s in shards):
            # Shared as a keyed store shares them, so that every adapter draws the same.
            whole = sum(sizes.values())
            sizes = {s.index: whole * (s.hi - s.lo) // HASH_SPACE for s in shards}
        quotas = proportional_quotas(n, [sizes[s.index] for s in shards])
        parts = [
            kept[s.index].take(np.arange(min(q, len(kept[s.index]))))
            for s, q in zip(shards, quotas, strict=True)
            if q and s.index in kept
        ]
        return Records.concat(parts, self.schema) if parts else Records.empty(self.schema)

    def _window_sample(self, shard: ShardRef, n: int, start: int, total: int) -> Records:
        """The ``n`` records of hash shard ``shard`` first on the ring from ``start`` (inside
        it), read as a window of the shard's range widened until it holds them."""
        span = shard.hi - shard.lo
        width = min(span, max(1024, int(span * min(1.0, 1.5 * n / max(total, 1)))))
        while True:
            end = start + width
            windows = [ShardRef(index=shard.index, by="hash", lo=start, hi=min(end, shard.hi))]
            if end > shard.hi:
                windows.append(
                    ShardRef(
                        index=shard.index, by="hash", lo=shard.lo, hi=shard.lo + end - shard.hi
                    )
                )
            parts = [b.records for w in windows for b in self.iter_shard(w, 50_000)]
            kept = Records.concat(parts, self.schema)
            if len(kept) >= n or width >= span:
                return _first_on_ring(kept, start, n)
            width = min(span, width * 4)

    def matching(self, flt: Filter) -> Ids:
        """Labels of the records whose payload matches ``flt``, found by reading every record
        (engines with a filter of their own answer this themselves)."""
        found = [
            b.records.labels[evaluate(flt, b.records)]
            for b in self.iter_shard(WHOLE, 50_000)
            if len(b)
        ]
        return np.concatenate(found) if found else np.empty(0, np.int64)


class CollectionStore(ScanningStore):
    """A store on one collection of an engine with aliases (Qdrant, Milvus): the engine's client,
    the collection's name, and stable names as the engine's aliases (``aliases`` names its kind
    of :class:`Aliases`)."""

    aliases: type[Aliases]

    def __init__(self, client: Any, scope: Scope, name: str, schema: RecordSchema) -> None:
        super().__init__(scope, schema)
        self.client = client
        self.name = name
        self.metric = schema.primary.metric or "l2"

    def point_name(self, name: str, *, create: bool = True) -> StableNameSwitch:
        """Point the alias ``name`` at this version's collection (see :meth:`Aliases.point`)."""
        return self.aliases(self.client).point(name, self.name, create=create)

    def name_points_at(self, name: str) -> str | None:
        return self.aliases(self.client).target(name)

    def drop_name(self, name: str) -> bool:
        return self.aliases(self.client).drop(name, self.name)


def sample_rows(records: Records) -> list[dict[str, Any]]:
    """A few records as JSON-able rows, for ``inspect`` (vectors cut to their first values)."""
    out = []
    for row in records.batch.to_pylist():
        shown: dict[str, Any] = {}
        for key, value in row.items():
            if key.startswith("v:") and value is not None:
                head = [round(float(x), 4) for x in value[:4]]
                shown[key[2:]] = head + (["..."] if len(value) > 4 else [])
            elif key.startswith("p:"):
                shown[key[2:]] = value.isoformat() if hasattr(value, "isoformat") else value
            elif key == "x":
                shown["extra"] = value
            else:
                shown[key] = value
        out.append(shown)
    return out


def ring_window(start: int, width: int) -> list[ShardRef]:
    """The key range ``[start, start + width)`` of the key ring, as one or two shards."""
    end = start + width
    if end <= HASH_SPACE:
        return [ShardRef(index=0, by="hash", lo=start, hi=end)]
    return [
        ShardRef(index=0, by="hash", lo=start, hi=HASH_SPACE),
        ShardRef(index=0, by="hash", lo=0, hi=min(start, end - HASH_SPACE)),
    ]


# Up to this many hash shards, a keyed store's stratified sample counts each shard's records;
# beyond, it shares the sample by key range (see ScanningStore.sample_shards).
COUNTED_STRATA = 256


def proportional_quotas(n: int, sizes: list[int]) -> list[int]:
    """``n`` split over strata of ``sizes`` in proportion (largest remainders, ties to the
    earlier stratum), none given more than it holds: they sum to ``min(n, sum(sizes))``."""
    total = sum(sizes)
    if total <= 0 or n <= 0:
        return [0] * len(sizes)
    n = min(n, total)
    exact = [n * size / total for size in sizes]
    quotas = [min(size, int(e)) for size, e in zip(sizes, exact, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    while sum(quotas) < n:
        for i in order:
            if sum(quotas) >= n:
                break
            if quotas[i] < sizes[i]:
                quotas[i] += 1
    return quotas


def _start_in(shard: ShardRef, start: int) -> int:
    """The seeded point ``start`` of the key ring moved inside hash shard ``shard`` (the same
    relative place in every shard); the ring's point itself for a range shard."""
    if shard.by != "hash":
        return start
    return shard.lo + start % (shard.hi - shard.lo)


def _first_on_ring(records: Records, start: int, n: int) -> Records:
    """The ``n`` records whose keys follow ``start`` most closely on the key ring (ties by
    label), in that order."""
    if not len(records):
        return records
    labels = records.labels
    rank = (hash_key(labels) - start) % HASH_SPACE
    order = np.lexsort((labels, rank))[:n]
    return records.take(order)


def in_shard(labels: Ids, shard: ShardRef) -> npt.NDArray[np.bool_]:
    """Which records belong to ``shard`` (for stores that keep no shard key)."""
    key = hash_key(labels) if shard.by == "hash" else labels
    return (key >= shard.lo) & (key < shard.hi)


def ids_of(store: ScanningStore, ids: Ids | pa.Array | Any) -> pa.Array:
    """Ids handed to a store's delete or fetch as an Arrow array of the store's id kind.

    Raises:
        DataError: ids of another kind.
    """
    return id_array(ids, store.schema.id_kind)


Row = TypeVar("Row")


def seek_bounds(shard: ShardRef, cursor: Cursor | None) -> tuple[int, tuple[int, int] | None]:
    """Where a scan of ``shard`` ordered by its key resumes after ``cursor``: the lowest value of
    the key column (``h`` for hash shards, ``id`` for range shards) and, for a hash shard, the
    ``(h, id)`` row the next rows must come after (None when the bound says it all).

    The bound is the cursor's own key, not the shard's: given both, SQLite seeks to the shard's
    start and skips every row read before (the last 100 rows of a 250,000-row shard took 65 ms
    against 0.1 ms from the cursor's key), so a shard's batches cost more and more. The
    row-value comparison then finds the exact row (an OR of the two conditions made SQLite walk
    the shard as well).
    """
    if cursor is None:
        return shard.lo, None
    if shard.by == "hash":
        return max(shard.lo, cursor.key), (cursor.key, cursor.id)
    return max(shard.lo, cursor.id + 1), None


def paged_ids(
    fetch: Callable[[int | None, int], list[Row]],
    id_of: Callable[[Row], int],
    batch_size: int,
    page_size: int,
) -> Iterator[Ids]:
    """Every id ``fetch`` pages out (see :func:`collect_pages`), ``batch_size`` at a time."""
    after: int | None = None
    while rows := collect_pages(fetch, id_of, after, batch_size, page_size):
        ids = np.array([id_of(r) for r in rows], dtype=np.int64)
        yield ids
        after = int(ids.max())


def collect_pages(
    fetch: Callable[[Any, int], list[Row]],
    id_of: Callable[[Row], Any],
    after: Any,
    limit: int,
    page_size: int,
) -> list[Row]:
    """Up to ``limit`` rows after id ``after``, for engines that cap a page at ``page_size``.

    ``fetch(after, n)`` returns at most ``n`` rows with ids greater than ``after`` in id order;
    the next page starts after the largest id of the last one.
    """
    rows: list[Row] = []
    while len(rows) < limit:
        want = min(page_size, limit - len(rows))
        page = fetch(after, want)
        if not page:
            break
        rows.extend(page)
        after = max(id_of(r) for r in page)
        if len(page) < want:
            break
    return rows


def check_dimension(scope: Scope, found: int, wanted: int | None) -> None:
    """Refuse to reopen a version with another dimension than it holds.

    Raises:
        DataError: naming both dimensions.
    """
    if wanted is not None and found != wanted:
        raise DataError(
            f"{scope} holds {found}-dimensional vectors, not {wanted}; "
            "use a new version name for the new dimension"
        )


def check_schema(
    scope: Scope, found: RecordSchema, schema: RecordSchema | None, dimension: int | None
) -> None:
    """Refuse to reopen a version with a record schema (given without a dimension) of another
    shape than the one it holds.

    Raises:
        DataError: the shapes differ.
    """
    if schema is not None and dimension is None and found.shape() != schema.shape():
        raise DataError(f"{scope} exists with another record schema; use a new version name")


def schema_to_create(
    schema: RecordSchema | None, dimension: int | None, metric: str
) -> RecordSchema | None:
    """What a store creates a version from: ``schema``, or else a plain schema of ``dimension``
    (None: neither given), its primary vector's metric ``metric`` unless it names one."""
    if schema is None and dimension is not None:
        schema = RecordSchema.plain(dimension)
    if schema is not None and schema.primary.metric is None:
        primary = schema.primary.model_copy(update={"metric": metric})
        schema = schema.model_copy(update={"vectors": (primary, *schema.vectors[1:])})
    return schema


def increasing_bounds(ids_at: Callable[[int], int | None], count: int, parts: int) -> list[int]:
    """``parts - 1`` strictly increasing ids, the id at each ``i * count // parts`` position.

    ``ids_at(offset)`` returns the id at that position in id order (None past the end).
    """
    bounds: list[int] = []
    for i in range(1, parts):
        value = ids_at(i * count // parts)
        if value is None:
            value = bounds[-1] + 1 if bounds else 0
        if bounds and value <= bounds[-1]:
            value = bounds[-1] + 1
        bounds.append(value)
    return bounds


class Clients:
    """One engine client per key per process, made on first use (an embedded engine's file or
    directory allows one owner); ``close`` closes them all, and the process closes them on its
    way out (left to the interpreter's teardown, Qdrant's local client can fail in its own
    ``__del__`` and print a traceback as the process exits)."""

    def __init__(self) -> None:
        self._clients: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._at_exit = False

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The client of ``key``, made by ``make`` the first time."""
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = make()
                if not self._at_exit:
                    atexit.register(self.close)
                    self._at_exit = True
            return client

    def close(self) -> None:
        """Close every client and forget them (the next ``get`` makes a new one)."""
        with self._lock:
            for client in self._clients.values():
                try:
                    client.close()
                except Exception:  # a client whose engine is already gone
                    continue
            self._clients.clear()


class Aliases:
    """An engine's collection aliases, the stable names of Qdrant and Milvus. The engines differ
    only in how an alias is read, moved and dropped; pointing one (idempotent, checked after)
    and dropping one (only where it points at ours) are written once, here."""

    def __init__(self, client: Any) -> None:
        self.client = client

    # The engine's name, as an error message says it.
    engine: str

    def target(self, name: str) -> str | None:
        """The collection the alias ``name`` points at (None: no such alias).

        Raises:
            PreconditionError: ``name`` is a collection, not an alias.
        """
        found = self._find(name)
        if found is None and self._is_collection(name):
            raise PreconditionError(
                f"{name} is a {self.engine} collection, not an alias: a stable name must be free "
                "or an alias (collections cannot be renamed; give applications a new name, an "
                "alias)"
            )
        return found

    def _find(self, name: str) -> str | None:
        """The collection the alias ``name`` points at, as the engine says (None: no such
        alias)."""
        raise NotImplementedError

    def _is_collection(self, name: str) -> bool:
        raise NotImplementedError

    def _move(self, name: str, collection: str, before: str | None) -> None:
        """Point ``name`` at ``collection`` in one step (it pointed at ``before``)."""
        raise NotImplementedError

    def _drop(self, name: str) -> None:
        raise NotImplementedError

    def point(self, name: str, collection: str, *, create: bool = True) -> StableNameSwitch:
        """Point the alias ``name`` at ``collection`` and check it took; where it already points
        there (or, without ``create``, where there is no such alias) nothing changes.

        Raises:
            PreconditionError: ``name`` is a collection.
            DataError: the alias points elsewhere after the switch.
        """
        before = self.target(name)
        if before == collection or (before is None and not create):
            return StableNameSwitch(name=name, kind="alias", before=before, after=before)
        self._move(name, collection, before)
        after = self.target(name)
        if after != collection:
            raise DataError(f"alias {name} points at {after} after the switch, not at {collection}")
        return StableNameSwitch(name=name, kind="alias", before=before, after=after, changed=True)

    def drop(self, name: str, collection: str) -> bool:
        """Drop the alias ``name`` if it points at ``collection``; whether it did.

        Raises:
            PreconditionError: it points at another collection (not ours to remove).
        """
        before = self.target(name)
        if before is None:
            return False
        if before != collection:
            raise PreconditionError(f"alias {name} points at {before}, not at {collection}: kept")
        self._drop(name)
        return True
