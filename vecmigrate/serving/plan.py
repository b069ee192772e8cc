"""What the router resolves once per routing generation: a plan it executes per request.

A plan names, for one collection at one generation of its routing row, every version a request
can reach (the read version, the candidate that takes canary or shadow reads, the versions that
take writes) with everything a request needs of it: the version's record, its store handle, its
loaded index (kept current with the change log, ``vecmigrate.indexes.live``) and its model. A
request then goes one way, gateway -> router -> store or index, and asks the catalog nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vecmigrate.catalog.catalog import VersionRecord
from vecmigrate.indexes.build import NativeIndex
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.records import Filter
from vecmigrate.model.routing import RoutingView
from vecmigrate.records.vectors import Distances, ExactKnn, Ids, Vectors
from vecmigrate.stores import VectorStore, records_at

# One float32 query of the read version's dimension, k: the answer, or None for "take the
# general path".
OneQuery = Callable[[Vectors, int], tuple[Distances, Ids] | None]
# Up to this many records match a filter: searched exactly (read from the store), not through
# the index (an HNSW graph searched for a few records among many walks most of it).
EXACT_AMONG = 2048
# ... or at most this share of the version's records: a graph search for a sparse set walks
# through mostly records it must skip, and comes back short.
EXACT_SHARE = 0.02


@dataclass(frozen=True, slots=True)
class Side:
    """One version as the router reaches it."""

    version: str
    index: str | None  # the index the routing row names for it (None: exact search in the store)
    record: VersionRecord
    store: VectorStore
    searcher: LiveIndex | NativeIndex | None
    model: str  # ``model_id@model_version``: the space of its vectors

    @property
    def dimension(self) -> int:
        return self.record.embedding.dimension

    def search(self, queries: Vectors, k: int, flt: Filter | None = None) -> tuple[Distances, Ids]:
        """k nearest neighbours in this version (its index, or exactly in its store), among
        the records whose payload matches ``flt`` if given.

        A database's own index filters as it searches (the engine's native filter). Over the
        indexes vecmigrate builds, the store names the matching records first: a few
        (``EXACT_AMONG`` or ``EXACT_SHARE`` of the version) are searched exactly, more through
        the index, which skips every other record while it searches (and a query it answers
        short, exactly).
        """
        if flt is None:
            if self.searcher is None:
                return self.store.search(queries, k, metric=str(self.record.embedding.metric))
            return self.searcher.search(queries, k)
        if isinstance(self.searcher, NativeIndex):
            return self.searcher.search(queries, k, flt)
        allowed = np.unique(self.store.matching(flt))
        if self.searcher is None:
            return self._exact_among(queries, k, allowed)
        total = sum(s.count for s in self.searcher.shards)
        if len(allowed) <= max(EXACT_AMONG, EXACT_SHARE * total):
            return self._exact_among(queries, k, allowed)
        d, i = self.searcher.search(queries, k, allowed)
        # A graph searched for a sparse set can come back short: those queries, exactly.
        short = np.flatnonzero((i >= 0).sum(axis=1) < min(k, len(allowed)))
        if len(short):
            d[short], i[short] = self._exact_among(queries[short], k, allowed)
        return d, i

    def _exact_among(self, queries: Vectors, k: int, allowed: Ids) -> tuple[Distances, Ids]:
        exact = ExactKnn(queries, k, str(self.record.embedding.metric))
        exact.add(*self.store.fetch_labels(allowed))
        return exact.result()


def distinct_records(sides: tuple[Side, ...]) -> tuple[Side, ...]:
    """``sides`` less those reading the records an earlier one reads."""
    seen: set[str] = set()
    out = []
    for side in sides:
        held = records_at(side.store)
        if held is None or held not in seen:
            out.append(side)
        if held is not None:
            seen.add(held)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Plan:
    """How requests to one collection are served at one routing generation."""

    view: RoutingView
    read: Side | None
    # The version the routing row sends some reads to (ramp or shadow), if any.
    candidate: Side | None
    writes: tuple[Side, ...]
    # Of ``writes``, those whose stores take each write: one a set of records (versions that
    # share their records, ``records: shared``, are written once).
    stored: tuple[Side, ...]
    # Writes come in the space of this version (the read version, else the first written).
    live: Side | None
    # Whether vector queries can reach the candidate: only within one model (a query vector
    # is in the read version's space).
    vectors_canary: bool
    # The hot path: one query of the read version's dimension to a one-shard hnswlib index,
    # no canary, no shadow; None when the general path serves every request.
    one: OneQuery | None
    shape: tuple[int, ...]
    version: str | None
    index: str | None

    @property
    def generation(self) -> int:
        return self.view.generation

    def sides(self) -> list[Side]:
        """Every version the plan reaches, once each."""
        seen: dict[str, Side] = {}
        for side in (self.read, self.candidate, *self.writes):
            if side is not None:
                seen.setdefault(side.version, side)
        return list(seen.values())

    def live_indexes(self) -> list[LiveIndex]:
        """The in-memory indexes the plan keeps current with the log: those it serves from,
        and those of versions still written that an earlier plan served from (on standby)."""
        found: dict[str, LiveIndex] = {}
        for side in self.sides():
            if isinstance(side.searcher, LiveIndex):
                found.setdefault(side.searcher.index_id, side.searcher)
        return list(found.values())
