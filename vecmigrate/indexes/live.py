"""Indexes kept current with the change log while they serve.

An index artifact holds a collection's writes up to its log position. A process serving it loads
it and applies every later entry of the change log to its in-memory copy, in log order. Every
process applies the same entries in the same order, whatever its own writes were, so all of them
agree on which records the index holds at each log position (an HNSW graph's links depend on the
order and grouping of its inserts; its records do not).

An entry reaches the index in two steps:

* it is *staged*: it joins the overlay, which searches lay over the index (every id it touches is
  taken out of the index's answers and the record it writes is searched exactly), so a write is
  seen the moment it is acknowledged;
* it is *applied*, a few records at a time, to the index itself (hnswlib: ``add_items`` and
  ``mark_deleted``, reusing deleted slots; FAISS flat and IVF: ``remove_ids`` and
  ``add_with_ids``) and leaves the overlay. Once the applier has caught up the overlay is empty
  and a search is the index's own search and nothing else, however many writes came before.

Two kinds of entries stay in the overlay until a compaction folds them into a new artifact
(``vecmigrate.indexes.compaction``): every write to a FAISS HNSW index (its graph cannot drop a
vector), and writes whose vector is in another model's space than the index (during a move to a
new embedding model the log holds the serving model's vectors; the version's own are read from
its store).

Searches take no lock. hnswlib and FAISS allow searches in parallel but not beside a write, so a
writer first raises a flag that turns new searches away (they wait for it on the writer's lock)
and then waits until no thread is inside one of this index's searches. A search notes its
thread in the index's ``_inside`` before it reads the flag and takes the note away when it
ends; under the GIL one of the two always sees the other. A lock on the search path, even
uncontended, cost more than the router's whole overhead target on a 2-core machine (0.25 us a
round trip, ~2 us after a search had evicted it from cache, against ~31 us for the search);
the note costs ~0.08 us. (The writer used to find the searches in the threads' frames,
``sys._current_frames`` and ``f_back``: on Python 3.11 reading another thread's frames while it
runs can crash the interpreter, as thread-sampling profilers found.)
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vecmigrate.catalog.catalog import IndexVersionRecord
from vecmigrate.catalog.changelog import DELETE, ChangeLog, Changes
from vecmigrate.errors import PreconditionError
from vecmigrate.indexes.artifacts import F32, I64, LoadedIndex, ShardedIndex
from vecmigrate.model.spec import Metric
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import (
    Distances,
    ExactKnn,
    Ids,
    Vectors,
    merge_topk,
    normalize_rows,
)

# Reads the version's own vectors of some records (its store's ``fetch``).
Fetch = Callable[[Ids], tuple[Ids, Vectors]]

# What an overlay entry says of its id: written with this vector, written (vector in the store),
# deleted.
_UP, _FETCH, _DEL = 0, 1, 2
Codes = npt.NDArray[np.int8]

_isfinite = math.isfinite  # bound once for the hot path (a module lookup is a cache miss there)
_get_ident = threading.get_ident

# Records applied to an index per turn of the applier: each turn keeps searches out while it
# runs (a few ms for hnswlib inserts at 64-384 dimensions).
APPLY_CHUNK = 256
# What each kind of record is guessed to take to apply (seconds, one thread) until an index has
# timed its own: on the slow side, so the first turns are short. hnswlib updates a record it
# holds several times slower than it adds one, as it repairs its neighbours' links (40,000 x 64,
# M 16: 1.03 ms an update against 0.17 ms an insert at ef_construction 100, 1.66 against
# 0.32 ms at 200); a delete only marks it (0.2 us).
FIRST_PACE = {"add": 1e-3, "update": 5e-3, "delete": 2e-5}
# Log entries read per query when catching up.
LOG_PAGE = 50_000
# The most results a search asks the index for beyond k, to make up for those laid over.
OVERFETCH = 1024


@dataclass(frozen=True)
class NetChanges:
    """The effect of a run of change-log entries ``(after, last]`` on one index: records
    written with their vectors in the index's space, records written whose vectors must be read
    from the store, and records deleted. Each id appears once (the run's last entry wins)."""

    after: int
    last: int
    ids: Ids
    vectors: Vectors
    foreign: Ids
    deleted: Ids

    @property
    def size(self) -> int:
        return len(self.ids) + len(self.foreign) + len(self.deleted)

    def changed(self) -> Ids:
        """Every id the run touches."""
        return np.concatenate([self.ids, self.foreign, self.deleted])

    def split(self, n: int) -> tuple[NetChanges, NetChanges | None]:
        """The first ``n`` records and the rest (None when nothing is left). Ids are distinct,
        so the parts can be applied in either order."""
        if self.size <= n:
            return self, None
        a, b, c = len(self.ids), len(self.foreign), len(self.deleted)
        i = min(n, a)
        f = min(n - i, b)
        d = n - i - f
        head = NetChanges(
            self.after,
            self.after,
            self.ids[:i],
            self.vectors[:i],
            self.foreign[:f],
            self.deleted[:d],
        )
        rest = NetChanges(
            self.after,
            self.last,
            self.ids[i:],
            self.vectors[i:],
            self.foreign[f:b],
            self.deleted[d:c],
        )
        return head, rest

    @classmethod
    def of_write(
        cls, after: int, last: int, dimension: int, ids: Ids, vectors: Vectors | None, op: str
    ) -> NetChanges:
        """One write through the router: ``vectors`` in the index's space, or None when the
        version's vectors are only in its store (or for a delete)."""
        none = np.empty(0, np.int64)
        empty = np.empty((0, dimension), np.float32)
        ids = np.asarray(ids, np.int64)
        if op == DELETE:
            return cls(after, last, none, empty, none, ids)
        if vectors is None:
            return cls(after, last, none, empty, ids, none)
        return cls(after, last, ids, np.ascontiguousarray(vectors, dtype=F32), none, none)

    @classmethod
    def of_log(
        cls, entries: Changes, after: int, space: str, dimension: int, normalized: bool
    ) -> NetChanges:
        """The entries of ``entries`` after ``after``, for an index of vectors in ``space``
        (a model key) of ``dimension``, unit-normed if ``normalized``.

        An entry's vector is taken as it is when it was written in the index's space (an entry
        from before the log named spaces: when its length fits); otherwise the record is to be
        read from the version's store.
        """
        keep = entries.seqs > after
        seqs = entries.seqs[keep]
        ids = entries.ids[keep]
        rows = np.flatnonzero(keep)
        last = int(seqs[-1]) if len(seqs) else after
        # The last entry of each id: the first occurrence in the reversed run.
        _, first_rev = np.unique(ids[::-1], return_index=True)
        latest = np.sort(len(ids) - 1 - first_rev)
        up_ids: list[int] = []
        blobs: list[bytes] = []
        foreign: list[int] = []
        deleted: list[int] = []
        size = dimension * 4
        spaces = entries.spaces
        for pos in latest.tolist():
            row = int(rows[pos])
            record_id = int(ids[pos])
            if entries.ops[row] == DELETE:
                deleted.append(record_id)
                continue
            blob = entries.vectors[row]
            written = spaces[row] if spaces else None
            if blob is not None and len(blob) == size and written in (space, None):
                up_ids.append(record_id)
                blobs.append(blob)
            else:
                foreign.append(record_id)
        vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimension)
        vectors = vectors.astype(np.float32)
        if normalized and len(vectors):
            vectors = normalize_rows(vectors)
        return cls(
            after,
            last,
            np.asarray(up_ids, np.int64),
            vectors,
            np.asarray(foreign, np.int64),
            np.asarray(deleted, np.int64),
        )


@dataclass(frozen=True)
class _Entries:
    """Overlay entries, the latest per id, sorted by id: what each says and, for ``_UP``, the
    vector (``rows`` points into ``vectors``; -1 for the others)."""

    ids: Ids
    codes: Codes
    rows: npt.NDArray[np.int64]
    vectors: Vectors

    @classmethod
    def none(cls, dimension: int) -> _Entries:
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.int8),
            np.empty(0, np.int64),
            np.empty((0, dimension), np.float32),
        )

    @classmethod
    def of(cls, net: NetChanges) -> _Entries:
        n_up, n_f, n_d = len(net.ids), len(net.foreign), len(net.deleted)
        return cls(
            net.changed(),
            np.repeat(np.array([_UP, _FETCH, _DEL], np.int8), [n_up, n_f, n_d]),
            np.concatenate([np.arange(n_up, dtype=np.int64), np.full(n_f + n_d, -1, np.int64)]),
            net.vectors,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def keep(self, mask: npt.NDArray[np.bool_]) -> _Entries:
        return _Entries(self.ids[mask], self.codes[mask], self.rows[mask], self.vectors)


def _latest(parts: list[_Entries]) -> _Entries:
    """The entries of ``parts`` (oldest first), the latest of each id kept."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError("nothing to consolidate")
    if len(parts) == 1 and len(parts[0].vectors) == int((parts[0].codes == _UP).sum()):
        one = parts[0]
        if len(np.unique(one.ids)) == len(one.ids):
            order = np.argsort(one.ids, kind="stable")
            return _Entries(one.ids[order], one.codes[order], one.rows[order], one.vectors)
    ids = np.concatenate([p.ids for p in parts])
    codes = np.concatenate([p.codes for p in parts])
    offsets = np.cumsum([0] + [len(p.vectors) for p in parts[:-1]])
    rows = np.concatenate(
        [np.where(p.rows >= 0, p.rows + off, -1) for p, off in zip(parts, offsets, strict=True)]
    )
    vectors = np.concatenate([p.vectors for p in parts])
    uniq, first_rev = np.unique(ids[::-1], return_index=True)
    pick = len(ids) - 1 - first_rev
    codes, rows = codes[pick], rows[pick]
    # Only the vectors still referred to are kept (the overlay's memory stays its size).
    up = rows >= 0
    kept_rows = np.full(len(rows), -1, np.int64)
    kept_rows[up] = np.arange(int(up.sum()), dtype=np.int64)
    return _Entries(uniq, codes, kept_rows, vectors[rows[up]])


@dataclass(frozen=True)
class Overlay:
    """What searches lay over the index: ids to take out of its answers (``hidden``, sorted),
    records to search exactly (``ids`` with ``vectors``), and records to read from the store
    first (``fetch``). Never changed once made: a writer makes a new one."""

    entries: _Entries
    hidden: Ids
    ids: Ids
    vectors: Vectors
    fetch: Ids

    @classmethod
    def of(cls, entries: _Entries) -> Overlay:
        up = entries.codes == _UP
        return cls(
            entries,
            entries.ids,
            entries.ids[up],
            entries.vectors[entries.rows[up]],
            entries.ids[entries.codes == _FETCH],
        )

    def __len__(self) -> int:
        return len(self.hidden)


# ``search_one``'s bound on k over FAISS shards, which answer any k (padded past their records).
_ANY_K = 1 << 30


def _wait_for_searches(owner: LiveIndex) -> None:
    """Until no thread but this one is inside one of ``owner``'s searches."""
    inside = owner._inside
    me = _get_ident()
    pause = 0.00005
    while len(inside) > (me in inside):
        time.sleep(pause)  # gives the GIL to the searches, which then finish
        pause = min(pause * 2, 0.002)


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


class LiveIndex:
    """An index version in memory, kept current with the change log (see the module's doc).

    Thread-safe: any number of threads search while one at a time stages or applies changes.
    """

    def __init__(
        self,
        index_id: str,
        shards: list[LoadedIndex],
        position: int,
        *,
        space: str,
        normalized: bool,
        metric: Metric,
        dimension: int,
        fetch: Fetch | None = None,
    ) -> None:
        if not _gil_enabled():
            raise PreconditionError(
                "serving indexes that take writes needs the GIL (searches run without a lock); "
                "run the router on a standard (not free-threaded) Python build"
            )
        self.index_id = index_id
        self.shards = shards
        self.space, self.normalized, self.metric = space, normalized, metric
        self.dimension = dimension
        self.updatable = all(s.updatable for s in shards)
        self._searcher = ShardedIndex(shards)
        # Reads the version's own vectors of records laid over the index from its store.
        self.fetch = fetch
        # The log positions: the artifacts hold everything up to ``base``; the index (with the
        # entries kept in the overlay) up to ``applied``; the overlay what is staged up to
        # ``known``.
        self.base = position
        self.applied = position
        self.known = position
        self._queue: deque[NetChanges] = deque()
        self._kept = _Entries.none(dimension)
        self.overlay = Overlay.of(self._kept)
        self._since_rebuild = 0
        # Seconds a record of each kind took to apply, a moving average over the turns.
        self.pace = dict(FIRST_PACE)
        self._lock = threading.Lock()
        self.writing = False
        # The threads inside one of this index's searches (see the module's doc).
        self._inside: dict[int, bool] = {}
        # Searches that had to wait for a writer (read and reset by the applier; a lost count
        # under a race only shortens one pause).
        self.waited = 0
        # The one-query path, while nothing is laid over the index: hnswlib shards (k up to
        # each one's ef and count; one shard's answer as it is, several merged), or FAISS
        # shards (any k: FAISS pads a short answer).
        hnsw = bool(shards) and all(s.kind == "hnswlib_hnsw" for s in shards)
        self._knn = shards[0].native.knn_query if hnsw and len(shards) == 1 else None
        self._knns = tuple(s.native.knn_query for s in shards) if hnsw and len(shards) > 1 else ()
        self._faiss_one = bool(shards) and all(s.kind != "hnswlib_hnsw" for s in shards)
        # The largest k ``search_one`` answers while nothing is laid over the index and no
        # writer is in it, else 0 (one attribute for the hot path).
        self._one_k = 0
        self._settle()
        # Held while the search parameters change and by the searches that may not see them
        # change under them (the shadow reads that try tuning candidates).
        self.params_lock = threading.Lock()

    # -- searches -------------------------------------------------------------------------------

    @property
    def search_one_ready(self) -> bool:
        """Whether ``search_one`` can answer (hnswlib shards, or FAISS shards); it still
        declines a query while the overlay holds anything."""
        return self._knn is not None or bool(self._knns) or self._faiss_one

    def search_one(self, query: Vectors, k: int) -> tuple[Distances, Ids] | None:
        """k nearest neighbours of one finite float32 query of the index's dimension in the
        fewest steps; None when that takes more (something laid over the index, a writer in
        it, k beyond the ef or the count of an hnswlib shard) or the query is not finite:
        ``search`` answers those.

        NaN or infinity in a query makes every distance to it NaN or infinite, the nearest one
        too (or leaves FAISS with no answer, padded at an infinite distance): reading that one
        distance replaces testing the query up front.
        """
        inside, me = self._inside, _get_ident()
        inside[me] = True  # before the writer's flag (``_one_k``) is read
        try:
            if not 0 < k <= self._one_k:
                return None
            knn = self._knn
            if knn is not None:  # one hnswlib shard: its answer as it is
                try:
                    labels, dist = knn(query, k)
                except RuntimeError:  # fewer than k found
                    return None
                # uint64 labels are ids below 2**63: the same bytes read as int64.
                found = labels.view(I64)
            elif self._knns:  # hnswlib shards: each one's answer, merged
                try:
                    answers = [each(query, k) for each in self._knns]
                except RuntimeError:  # fewer than k found in some shard
                    return None
                dist, found = merge_topk([(d, ids.view(I64)) for ids, d in answers], k)
            else:  # FAISS shards, searched in one call (``ShardedIndex``)
                dist, found = self._searcher.search(query[None], k)
        finally:
            del inside[me]
        if not _isfinite(dist.item(0)):
            return None
        return dist, found

    def search(self, queries: Vectors, k: int, allowed: Ids | None = None) -> tuple[Distances, Ids]:
        """k nearest neighbours over the index and its overlay: distances (smaller is closer)
        and ids, -1 padded; with ``allowed`` (sorted unique ids, as the version's store holds
        them now), among those only."""
        q = np.ascontiguousarray(queries, dtype=F32)
        while True:
            overlay = self.overlay  # read before the index: see ``drain``
            fetched = None
            if len(overlay.fetch):
                if self.fetch is None:
                    raise PreconditionError(
                        f"index {self.index_id} needs records from its store but has none"
                    )
                fetched = self.fetch(overlay.fetch)
            found = self._search_index(q, k, overlay.hidden, allowed)
            if found is not None:
                break
            self.waited += 1  # tells the applier to leave searches more time between turns
            with self._lock:  # a writer is changing the index: wait for it
                pass
        if not len(overlay):
            return found
        exact = ExactKnn(q, k, self.metric)
        exact.add(*_among(overlay.ids, overlay.vectors, allowed))
        if fetched is not None:
            exact.add(*_among(*fetched, allowed))
        return merge_topk([found, exact.result()], k)

    def _search_index(
        self, q: Vectors, k: int, hidden: Ids, allowed: Ids | None = None
    ) -> tuple[Distances, Ids] | None:
        """The index's own answer without the ``hidden`` ids (among the ``allowed`` ones, if
        given); None while a writer changes it."""
        inside, me = self._inside, _get_ident()
        inside[me] = True  # before the writer's flag is read
        try:
            return self._answer(q, k, hidden, allowed)
        finally:
            del inside[me]

    def _answer(
        self, q: Vectors, k: int, hidden: Ids, allowed: Ids | None
    ) -> tuple[Distances, Ids] | None:
        if self.writing:
            return None
        if allowed is not None:
            # The index skips what it must not answer while it searches: no over-fetching.
            if len(hidden):
                allowed = allowed[~np.isin(allowed, hidden, assume_unique=True)]
            return self._searcher.search(q, k, allowed)
        if not len(hidden):
            return self._searcher.search(q, k)
        # Over-fetch just enough to have k results left once hidden ones are dropped: start
        # small (most results are untouched) and widen only for queries that come up short,
        # up to OVERFETCH more (a query whose nearest records were nearly all written since
        # finds them in the overlay; an HNSW search for tens of thousands is a slow one).
        most = k + min(len(hidden), OVERFETCH)
        fetch = min(2 * k + 10, most)
        while True:
            d, i = self._searcher.search(q, fetch)
            # ``hidden`` is sorted: a binary search per result, where ``np.isin`` sorted both
            # sides on every search (2.6 of 10 ms with 55,000 records laid over).
            at = np.minimum(np.searchsorted(hidden, i), len(hidden) - 1)
            stale = hidden[at] == i
            short = ((i >= 0) & ~stale).sum(axis=1).min() < min(k, len(i[0]))
            if not short or fetch >= most:
                break
            fetch = min(fetch * 4, most)
        return np.where(stale, np.inf, d).astype(np.float32), np.where(stale, -1, i)

    # -- writes ---------------------------------------------------------------------------------

    def stage(self, net: NetChanges) -> None:
        """Lay a run of changes over the index (seen by the next search); the applier takes
        them into the index itself. Runs must come in log order; one already staged is
        skipped."""
        with self._lock:
            if net.last <= self.known:
                return
            if net.after != self.known:
                raise ValueError(f"changes after {net.after} staged at {self.known}: a gap")
            self._queue.append(net)
            self.known = net.last
            if net.size:
                self._one_k = 0
                self.overlay = Overlay.of(_latest([self.overlay.entries, _Entries.of(net)]))

    def drain(self, budget: int = APPLY_CHUNK, seconds: float | None = None) -> bool:
        """Apply up to ``budget`` staged records to the index, and with ``seconds``, only as
        many as its pace for each kind of record says fit in that long (an index that cannot
        take writes only folds them into its overlay: ``budget``); whether more are staged."""
        with self._lock:
            if not self._queue:
                return False
            net = self._queue[0]
            if seconds is not None and self.updatable:  # folding into the overlay is cheap
                budget = self._fitting(net, budget, seconds)
            head, rest = net.split(budget)
            if self.updatable and head.size:
                with self._exclusive():
                    self._apply(head)
            self._fold(head)
            if rest is None:
                self._queue.popleft()
                self.applied = head.last
            else:
                self._queue[0] = rest
            self._since_rebuild += head.size
            # Entries applied stay in the overlay for a while (laid over an index that holds
            # them, they change nothing): it is made again once half of it is applied, so a
            # burst of writes costs its size a few times over, not once per turn.
            if not self._queue or 2 * self._since_rebuild >= len(self.overlay):
                self._rebuild()
            return bool(self._queue)

    def _fitting(self, net: NetChanges, budget: int, seconds: float) -> int:
        """How many of ``net``'s first records (upserts, then deletes: ``split``'s order) fit
        in ``seconds`` at the index's pace, at least one and at most ``budget``."""
        # No more upserts than fit at the faster kind's pace are looked at.
        ids = net.ids[: min(budget, int(seconds / min(self.pace["add"], self.pace["update"])) + 1)]
        if self.shards[0].kind == "hnswlib_hnsw":
            held = np.zeros(len(ids), np.bool_)
            for shard in self.shards:
                held |= shard.holds(ids)
            each = np.where(held, self.pace["update"], self.pace["add"])
        else:  # FAISS removes what an upsert changes, then adds it
            each = np.full(len(ids), self.pace["add"] + self.pace["delete"])
        cost = np.cumsum(each)
        fit = int(np.searchsorted(cost, seconds, side="right"))
        if fit == len(ids):  # time left for deletes
            left = seconds - (float(cost[-1]) if len(ids) else 0.0)
            fit += int(left / self.pace["delete"])
        return max(1, min(budget, fit))

    def _timed(self, kind: str, records: int, began: float, threads: int) -> float:
        """Note how long ``records`` of ``kind`` took since ``began`` (on one thread, as
        turns apply them); the time now."""
        now = time.perf_counter()
        if records and threads == 1:
            self.pace[kind] += 0.3 * ((now - began) / records - self.pace[kind])
        return now

    def apply_now(self, net: NetChanges, threads: int = -1) -> None:
        """Apply a run of changes at once, before the index serves (no search can be in it),
        hnswlib inserts on ``threads`` threads (-1: every core)."""
        with self._lock:
            if net.last <= self.applied or self._queue:
                raise ValueError("apply_now is for an index that has not served yet")
            if net.after != self.applied:
                raise ValueError(f"changes after {net.after} applied at {self.applied}: a gap")
            if self.updatable and net.size:
                self._apply(net, threads)
            self._fold(net)
            self.applied = self.known = net.last
            self._rebuild()

    def apply_kept(self, ids: Ids, vectors: Vectors) -> None:
        """Add to the index, before it serves, the records its overlay keeps for the store,
        with their vectors as the store holds them (``ids`` it no longer holds are gone)."""
        with self._lock:
            if not self.updatable:
                raise ValueError("an index that cannot remove folds its overlay by a rebuild")
            kept = self._kept.ids[self._kept.codes == _FETCH]
            none = np.empty(0, np.int64)
            gone = np.setdiff1d(kept, ids)
            self._apply(NetChanges(self.applied, self.applied, ids, vectors, none, gone), -1)
            self._kept = self._kept.keep(self._kept.codes != _FETCH)
            self._rebuild()

    def home(self, ids: Ids) -> npt.NDArray[np.int64]:
        """The shard each new record goes to."""
        return _home(ids, len(self.shards))

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Searches kept out: new ones wait, those running finish first."""
        self._one_k = 0
        self.writing = True
        try:
            _wait_for_searches(self)
            yield
        finally:
            self.writing = False

    def _apply(self, net: NetChanges, threads: int = 1) -> None:
        """Take a run of changes into the index (hnswlib inserts on ``threads`` threads: one
        while the index serves, leaving the other cores to searches)."""
        gone = np.concatenate([net.foreign, net.deleted])
        new = np.ones(len(net.ids), np.bool_)
        began = time.perf_counter()
        if self.shards[0].kind == "hnswlib_hnsw":
            for shard in self.shards:
                shard.remove(gone)
            began = self._timed("delete", len(gone), began, threads)
            for shard in self.shards:
                if new.any():
                    held = shard.replace(net.ids[new], net.vectors[new], threads)
                    new[np.flatnonzero(new)[held]] = False
            began = self._timed("update", int((~new).sum()), began, threads)
        else:
            changed = net.changed()
            for shard in self.shards:
                shard.remove(changed)
            began = self._timed("delete", len(changed), began, threads)
        ids, vectors = net.ids[new], net.vectors[new]
        homes = _home(ids, len(self.shards))
        for n, shard in enumerate(self.shards):
            mine = homes == n
            if mine.any():
                shard.add(ids[mine], vectors[mine], threads)
        self._timed("add", len(ids), began, threads)
        self._settle()

    def _fold(self, net: NetChanges) -> None:
        """Entries the index could not take stay in the overlay: all of them for an index that
        cannot remove, records whose vectors are in the store for the others."""
        if not net.size:
            return
        folded = _latest([self._kept, _Entries.of(net)])
        self._kept = folded if not self.updatable else folded.keep(folded.codes == _FETCH)

    def _rebuild(self) -> None:
        parts = [self._kept, *(_Entries.of(n) for n in self._queue)]
        parts = [p for p in parts if len(p)]
        self.overlay = Overlay.of(_latest(parts) if parts else _Entries.none(self.dimension))
        self._since_rebuild = 0
        self._settle()

    def _settle(self) -> None:
        if self.writing or len(self.overlay):
            self._one_k = 0
        elif self._knn is not None or self._knns:
            self._one_k = min(min(int(s.params["ef_search"]), s.count) for s in self.shards)
        else:
            self._one_k = _ANY_K if self._faiss_one else 0

    def search_params(self, names: tuple[str, ...]) -> dict[str, int]:
        """The values of the search parameters ``names`` the index searches with now."""
        params = self.shards[0].params
        return {n: int(params[n]) for n in names if n in params}

    def set_search_params(self, params: dict[str, int]) -> None:
        """Search every shard with these values of its search parameters from now on (the
        caller holds ``params_lock``)."""
        for shard in self.shards:
            shard.set_search_params(params)
        self._settle()

    @property
    def direct(self) -> bool:
        """Whether a search is the index's own search and nothing else (hnswlib or FAISS
        shards, nothing laid over them, no writer in them)."""
        return self._one_k > 0

    # -- state ----------------------------------------------------------------------------------

    @property
    def staged(self) -> int:
        """Records staged and not yet applied."""
        return sum(n.size for n in self._queue)

    @property
    def laid_over(self) -> int:
        """Records searches lay over the index (applied ones included until the overlay is made
        again)."""
        return len(self.overlay)

    @property
    def kept(self) -> int:
        """Records only a compaction can fold into the index."""
        return len(self._kept)

    def follow(
        self, log: ChangeLog, tenant: str, collection: str, *, serving: bool, threads: int = -1
    ) -> int:
        """Stage (``serving``) or apply at once (on ``threads`` threads) every log entry after
        ``known``; how many."""
        seen = 0
        while True:
            entries = log.read(tenant, collection, self.known, LOG_PAGE)
            if not len(entries):
                return seen
            net = NetChanges.of_log(
                entries, self.known, self.space, self.dimension, self.normalized
            )
            if serving:
                self.stage(net)
            else:
                self.apply_now(net, threads)
            seen += len(entries)


def _among(ids: Ids, vectors: Vectors, allowed: Ids | None) -> tuple[Ids, Vectors]:
    """The records among ``ids`` whose ids are ``allowed`` (all of them without a list)."""
    if allowed is None:
        return ids, vectors
    keep = np.isin(ids, allowed)
    return ids[keep], vectors[keep]


def _home(ids: Ids, shards: int) -> npt.NDArray[np.int64]:
    """The shard a new record goes to: by its hash key, as hash shards split the key space
    (the same shard every process and every compaction picks)."""
    if shards == 1:
        return np.zeros(len(ids), np.int64)
    return (hash_key(ids) * shards) >> 32


@dataclass
class Served:
    """Where an index version's serving artifacts are: its newest compaction, or the artifacts
    the migration registered, and the log position they hold."""

    position: int
    artifacts: list[dict[str, Any]] = field(default_factory=list)


def served_artifacts(log: ChangeLog, record: IndexVersionRecord) -> Served:
    """The artifacts a router loads for an index version, and their log position."""
    compacted = log.compacted(record.id)
    if compacted is not None:
        return Served(compacted[0], compacted[1])
    return Served(log.index_position(record.id), list(record.artifacts))


def open_live(
    log: ChangeLog,
    record: IndexVersionRecord,
    *,
    space: str,
    normalized: bool,
    fetch: Fetch | None,
    threads: int = -1,
    low_stall: bool = False,
) -> LiveIndex:
    """Load an index version's newest artifacts and apply the log after their position
    (hnswlib inserts on ``threads`` threads: -1, every core, where nothing else is served;
    one beside indexes that serve, whose searches need the other cores; ``low_stall``, there
    too: hnswlib files are loaded holding the GIL only in short slices, see
    :class:`~vecmigrate.indexes.artifacts.LoadedIndex`).

    Raises:
        ArtifactError: an artifact is missing or does not match its checksum.
    """
    served = served_artifacts(log, record)
    shards = [
        LoadedIndex(
            Path(str(a["uri"])),
            expected_sha256=str(a["sha256"]),
            low_stall=low_stall,
            for_writes=True,
        )
        for a in served.artifacts
    ]
    first = shards[0]
    live = LiveIndex(
        record.id,
        shards,
        served.position,
        space=space,
        normalized=normalized,
        metric=first.metric,
        dimension=first.dimension,
        fetch=fetch,
    )
    live.follow(log, record.tenant, record.collection, serving=False, threads=threads)
    return live
