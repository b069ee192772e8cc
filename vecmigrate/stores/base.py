"""The contract every vector store adapter meets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from vecmigrate.errors import DataError
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.records.checksums import RecordChecksum
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import ExactKnn

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]


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
    """Records read from a shard, in scan order, and the cursor to resume after them."""

    ids: Ids
    vectors: Vectors
    next_cursor: Cursor | None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


# A shard covering every id: for whole-scope scans.
# Everything, in hash-key order: the order in which stores keep their records together (a hash
# shard is a contiguous range of the built-in store's table), so a whole scan reads sequentially.
WHOLE = ShardRef(index=0, by="hash", lo=0, hi=1 << 32)


@runtime_checkable
class VectorStore(Protocol):
    """A vector store opened for one :class:`Scope`. Every read and write stays inside it."""

    kind: str
    scope: Scope
    dimension: int

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
        """Every id of a shard once, batch by batch, in an order of the store's (the vectors
        left unread where the store can)."""
        ...

    def upsert(self, ids: Ids, vectors: Vectors) -> int:
        """Insert or replace records by id; running it twice leaves the same store."""
        ...

    def delete(self, ids: Ids) -> int:
        """Remove records by id; deleting a missing id is not an error."""
        ...

    def count(self, shard: ShardRef | None = None) -> int:
        """Records in the shard (or the whole scope)."""
        ...

    def checksum(self, shard: ShardRef | None = None) -> str:
        """Order-independent checksum of ids and vector bytes."""
        ...

    def search(
        self, queries: Vectors, k: int, metric: str = "l2"
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Exact k nearest neighbours (ground truth): distances and ids, -1 padded."""
        ...

    def sample(self, n: int, seed: int = 0) -> tuple[Ids, Vectors]:
        """A deterministic pseudo-random sample of ``n`` records."""
        ...

    def fetch(self, ids: Ids) -> tuple[Ids, Vectors]:
        """The records with these ids that exist, in id order."""
        ...

    def id_quantiles(self, parts: int) -> list[int]:
        """``parts - 1`` increasing ids splitting the scope into near-equal id ranges."""
        ...


class ScanningStore:
    """What every adapter gets from its ``scan``: batches, checksums, exact search, samples."""

    dimension: int

    def scan(self, shard: ShardRef, cursor: Cursor | None, limit: int) -> Batch:
        raise NotImplementedError

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
            if len(batch) == 0:
                return
            yield batch
            cursor = batch.next_cursor

    def iter_ids(self, shard: ShardRef, batch_size: int) -> Iterator[Ids]:
        """Every id of a shard once, in scan order; this default reads the vectors too."""
        for batch in self.iter_shard(shard, batch_size):
            yield batch.ids

    def _iter_ahead(self, shard: ShardRef, batch_size: int) -> Iterator[Batch]:
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
            ahead = reader.submit(self.scan, shard, None, batch_size)
            while True:
                batch = ahead.result()
                if len(batch) == 0:
                    return
                ahead = reader.submit(self.scan, shard, batch.next_cursor, batch_size)
                yield batch

    def checksum(self, shard: ShardRef | None = None, batch_size: int = 50_000) -> str:
        """Order-independent checksum of ids and vector bytes (comparable across adapters)."""
        acc = RecordChecksum()
        for batch in self.iter_shard(shard or WHOLE, batch_size):
            acc.add(batch.ids, batch.vectors)
        return acc.hexdigest()

    def search(
        self, queries: Vectors, k: int, metric: str = "l2", batch_size: int = 100_000
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Exact search over every record, streamed by batch (bounded memory)."""
        knn = ExactKnn(queries, k, metric)
        for batch in self.iter_shard(WHOLE, batch_size):
            knn.add(batch.ids, batch.vectors)
        return knn.result()

    def count(self, shard: ShardRef | None = None) -> int:
        raise NotImplementedError

    def id_quantiles(self, parts: int) -> list[int]:
        """``parts - 1`` increasing ids at equal steps, found by scanning ids in order.

        Adapters with a cheaper way (SQL ``OFFSET``) override this.
        """
        everything = list(self.iter_shard(WHOLE, 10_000))
        ids = np.concatenate([b.ids for b in everything]) if everything else np.empty(0, np.int64)
        ids.sort()
        return increasing_bounds(
            lambda offset: int(ids[offset]) if offset < ids.size else None, int(ids.size), parts
        )

    def sample(self, n: int, seed: int = 0) -> tuple[Ids, Vectors]:
        """The records with the smallest hash keys from a seeded start: deterministic, spread."""
        start = int(hash_key(np.array([seed], dtype=np.int64))[0])
        batch = self.scan(ShardRef(index=0, by="hash", lo=start, hi=1 << 32), None, n)
        if len(batch) < n:
            rest = self.scan(ShardRef(index=0, by="hash", lo=0, hi=start), None, n - len(batch))
            return (
                np.concatenate([batch.ids, rest.ids]),
                np.concatenate([batch.vectors, rest.vectors]),
            )
        return batch.ids, batch.vectors


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
    fetch: Callable[[int | None, int], list[Row]],
    id_of: Callable[[Row], int],
    after: int | None,
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
