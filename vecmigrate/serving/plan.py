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

from vecmigrate.catalog.catalog import VersionRecord
from vecmigrate.indexes.build import NativeIndex
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.routing import RoutingView
from vecmigrate.records.vectors import Distances, Ids, Vectors
from vecmigrate.stores import VectorStore

# One float32 query of the read version's dimension, k: the answer, or None for "take the
# general path".
OneQuery = Callable[[Vectors, int], tuple[Distances, Ids] | None]


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

    def search(self, queries: Vectors, k: int) -> tuple[Distances, Ids]:
        """k nearest neighbours in this version (its index, or exactly in its store)."""
        if self.searcher is None:
            return self.store.search(queries, k, metric=str(self.record.embedding.metric))
        return self.searcher.search(queries, k)


@dataclass(frozen=True, slots=True)
class Plan:
    """How requests to one collection are served at one routing generation."""

    view: RoutingView
    read: Side | None
    # The version the routing row sends some reads to (ramp or shadow), if any.
    candidate: Side | None
    writes: tuple[Side, ...]
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
