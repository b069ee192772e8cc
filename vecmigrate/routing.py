"""The read path applications use: follow the routing row to the version and index that serve.

This release routes reads; dual-write, canary split and shadow reads come with online migrations.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from vecmigrate.build import Searcher, load_index_version
from vecmigrate.catalog import Catalog
from vecmigrate.errors import NotFoundError
from vecmigrate.indexes import Distances, Ids, Vectors
from vecmigrate.lifecycle import RoutingView
from vecmigrate.spec import store_ref
from vecmigrate.stores import Scope, open_store


@dataclass(frozen=True)
class SearchResult:
    """Neighbours and where they came from."""

    version: str
    index: str | None
    distances: Distances
    ids: Ids


class Router:
    """Searches a collection through whatever its routing row says, re-read every few seconds.

    A change of routing (a cut-over or a rollback) is followed within ``refresh_seconds``.
    """

    def __init__(self, catalog: Catalog, refresh_seconds: float = 1.0) -> None:
        self.catalog = catalog
        self.refresh_seconds = refresh_seconds
        self._routes: dict[tuple[str, str], tuple[float, RoutingView]] = {}
        self._indexes: dict[str, Searcher] = {}
        self._lock = threading.Lock()

    def routing(self, tenant: str, collection: str) -> RoutingView:
        """The routing row, at most ``refresh_seconds`` old.

        Raises:
            NotFoundError: the collection has no routing row.
        """
        key = (tenant, collection)
        with self._lock:
            cached = self._routes.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.refresh_seconds:
            return cached[1]
        view = self.catalog.get_routing(tenant, collection)
        if view is None:
            raise NotFoundError(f"collection {tenant}/{collection} has no routing; seed it first")
        with self._lock:
            self._routes[key] = (time.monotonic(), view)
        return view

    def _index(self, index_id: str) -> Searcher:
        with self._lock:
            loaded = self._indexes.get(index_id)
        if loaded is None:
            loaded = load_index_version(self.catalog, self.catalog.get_index(index_id))
            with self._lock:
                self._indexes[index_id] = loaded
        return loaded

    def search(self, tenant: str, collection: str, queries: Vectors, k: int) -> SearchResult:
        """k nearest neighbours from the version and index the routing row names."""
        view = self.routing(tenant, collection)
        if view.read_version is None:
            raise NotFoundError(f"{tenant}/{collection} has no version serving reads")
        if view.read_index is not None:
            d, i = self._index(view.read_index).search(queries, k)
            return SearchResult(view.read_version, view.read_index, d, i)
        version = self.catalog.find_version(tenant, collection, view.read_version)
        if version is None:
            raise NotFoundError(f"{tenant}/{collection}@{view.read_version} is not registered")
        store = open_store(
            store_ref(version.store),
            Scope(tenant, collection, view.read_version),
        )
        d, i = store.search(queries, k, metric=str(version.embedding.metric))
        return SearchResult(view.read_version, None, d, i)
