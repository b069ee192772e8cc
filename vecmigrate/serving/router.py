"""The router applications use for search, upsert and delete.

It follows the collection's routing row (re-read at least every ``refresh_seconds``):

* reads go to the row's read version, except ``ramp_percent`` of them, chosen by a stable hash
  of the request key (the same user always lands on the same side), which go to the candidate;
* ``shadow_percent`` of reads are also run on the candidate on a side thread, never delaying or
  changing the response, and each pair's overlap@k and latencies are recorded for the gates;
* writes are checked (dimension, NaN) before anything is written, logged in the change log
  (which numbers them), then applied to every write version; while ``writes_paused`` (an
  offline migration) they are refused with :class:`WritesPausedError`.

Text goes in, too. ``search_text`` embeds each query with the model of the version it reads (or,
when that model is marked unavailable, with an available model through a registered adapter),
and a write that carries texts is embedded by each write version's own model: during a move to a
new embedding model both versions stay current. A raw query vector must match the version it
reads: its dimension always, and its model when the caller names it; while versions of two
models serve, raw vectors are answered by the read version only (no canary, no shadow).

An index artifact is a snapshot: it does not hold records written after it was built. Reads
through one therefore overlay the change log: records changed since the index's log position are
taken out of its results and searched exactly in the store, so an acknowledged write is visible
at once and a deleted record never comes back.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from vecmigrate.catalog.catalog import Catalog, VersionRecord
from vecmigrate.catalog.changelog import DELETE, UPSERT, ChangeLog
from vecmigrate.data.transforms import make_transform
from vecmigrate.embedding.reembed import QueryPath, query_path
from vecmigrate.embedding.registry import Registry, model_key
from vecmigrate.errors import DataError, NotFoundError, VecmigrateError
from vecmigrate.indexes.artifacts import F32, ShardedIndex
from vecmigrate.indexes.build import NativeIndex, Searcher, load_index_version
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import EmbeddingSchema, store_ref
from vecmigrate.records.vectors import (
    Distances,
    ExactKnn,
    Ids,
    Vectors,
    check_texts,
    check_vectors,
    merge_topk,
)
from vecmigrate.security.credentials import Principal
from vecmigrate.stores import Scope, VectorStore, open_store
from vecmigrate.validation.shadow import ShadowLog, ShadowSample


class WritesPausedError(VecmigrateError):
    """Writes to this collection are paused (an offline migration); retry after a while."""

    retry_after = 5


@dataclass(slots=True)
class SearchResult:
    """Neighbours and where they came from (slots, not frozen: built on every search)."""

    version: str
    index: str | None
    distances: Distances
    ids: Ids
    # How the query reached the version: "vectors", or the model (and adapter) that embedded it.
    via: str = "vectors"


def bucket(key: str) -> float:
    """A stable position in [0, 100) for a request key (the canary split)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 10_000 / 100.0


@dataclass
class _Overlay:
    """Latest change-log entry per id of one collection, kept up to date incrementally."""

    seq: int = 0  # read from the log up to here
    read_at: float = float("-inf")
    # id -> (sequence number, operation, vector bytes as written; None for a delete)
    last: dict[int, tuple[int, str, bytes | None]] | None = None
    # Arrays built from ``last`` per index position, with the entries noted since the build in
    # ``recent``: a search combines the two instead of rebuilding the arrays on every write.
    arrays: dict[int, tuple[Ids, Ids, Vectors]] = field(default_factory=dict)
    built_at: float = float("-inf")
    recent: dict[int, tuple[int, str, bytes | None]] = field(default_factory=dict)

    def note(self, seq: int, record_id: int, op: str, vec: bytes | None) -> None:
        """Keep an entry unless a newer one for the same id is already known."""
        assert self.last is not None
        known = self.last.get(record_id)
        if known is None or known[0] <= seq:
            self.last[record_id] = (seq, op, vec)
            self.recent[record_id] = (seq, op, vec)


@dataclass(slots=True)
class _Plan:
    """What a search of one collection needs, worked out once per routing refresh."""

    view: RoutingView
    version: str  # the read version
    index: str | None  # its index, as the view names it
    record: VersionRecord  # the read version's
    # The read index when a search is plain (no canary, no shadow, an index built by
    # vecmigrate), else None: the general path decides.
    searcher: Searcher | None
    # The overlay's entries (the very dict, updated in place): empty while no record changed
    # since the router started. Held here, not reached through the overlay, as is ``index``:
    # after a search each object the hot path reaches costs a cache miss.
    changed: dict[int, tuple[int, str, bytes | None]]
    # The fewest-steps path for one float32 query of the version's dimension (one hnswlib
    # shard), valid until ``until`` (the routing row and the overlay both fresh), else None.
    one: Callable[[Vectors, int], tuple[Distances, Ids] | None] | None
    shape: tuple[int]  # a single query's
    until: float


# The hot path's names, bound once: after a search, reaching ``np.ndarray`` or ``time.monotonic``
# through its module costs a cache miss or two (~0.3 us a lookup in paired timings).
_ndarray = np.ndarray
_monotonic = time.monotonic


def _check_finite(q: Vectors) -> None:
    if not np.isfinite(q).all():
        raise DataError("queries contain NaN or infinity")


class Router:
    """Search and write a collection through whatever its routing row says."""

    def __init__(
        self, catalog: Catalog, refresh_seconds: float = 1.0, shadow_threads: int = 2
    ) -> None:
        self.catalog = catalog
        self.refresh_seconds = refresh_seconds
        self.log = ChangeLog(catalog)
        self.shadow_log = ShadowLog(catalog)
        self._routes: dict[tuple[str, str], tuple[float, RoutingView]] = {}
        self._indexes: dict[str, Searcher] = {}
        self._versions: dict[tuple[str, str, str], tuple[VersionRecord, VectorStore]] = {}
        self._overlays: dict[tuple[str, str], _Overlay] = {}
        self._positions: dict[str, int] = {}
        self._plans: dict[tuple[str, str], _Plan] = {}
        self.registry = Registry(catalog)
        self._paths: dict[tuple[str, str, str], tuple[float, QueryPath]] = {}
        self._lock = threading.Lock()
        self._shadow_pool = ThreadPoolExecutor(shadow_threads, thread_name_prefix="shadow")
        self._shadow_in_flight = 0
        self._shadow_buffer: list[ShadowSample] = []
        self._shadow_flushed = time.monotonic()

    def close(self) -> None:
        """Finish shadow reads in flight and write their samples."""
        self._shadow_pool.shutdown(wait=True)
        self._flush_shadow(force=True)

    # -- routing ------------------------------------------------------------------------------

    def routing(self, tenant: str, collection: str) -> RoutingView:
        """The routing row, at most ``refresh_seconds`` old.

        Raises:
            NotFoundError: the collection has no routing row.
        """
        key = (tenant, collection)
        cached = self._routes.get(key)  # dict reads are atomic: no lock on the hot path
        if cached is not None and time.monotonic() - cached[0] < self.refresh_seconds:
            return cached[1]
        view = self.catalog.get_routing(tenant, collection)
        if view is None:
            raise NotFoundError(f"unknown collection {tenant}/{collection}")
        with self._lock:
            self._routes[key] = (time.monotonic(), view)
        return view

    def _version(
        self, tenant: str, collection: str, version: str
    ) -> tuple[VersionRecord, VectorStore]:
        key = (tenant, collection, version)
        found = self._versions.get(key)
        if found is None:
            record = self.catalog.find_version(tenant, collection, version)
            if record is None:
                raise NotFoundError(f"{tenant}/{collection}@{version} is not registered")
            store = open_store(store_ref(record.store), Scope(tenant, collection, version))
            found = (record, store)
            with self._lock:
                self._versions[key] = found
        return found

    def searcher(self, index_id: str) -> Searcher:
        """The loaded index this router serves ``index_id`` from (loaded on first use)."""
        loaded = self._indexes.get(index_id)
        if loaded is None:
            loaded = load_index_version(self.catalog, self.catalog.get_index(index_id))
            with self._lock:
                self._indexes[index_id] = loaded
        return loaded

    # -- reads --------------------------------------------------------------------------------

    def search(
        self,
        tenant: str,
        collection: str,
        queries: Vectors,
        k: int,
        key: str | None = None,
        model: str | None = None,
        access: Principal | None = None,
    ) -> SearchResult:
        """k nearest neighbours from the version the routing row gives this request.

        ``access``, the caller's credential, must allow searching this tenant's collection
        (checked before anything about the collection is looked up).

        ``key`` (a user or session id) decides the canary side; without one the query bytes do.
        ``model`` (``model_id`` or ``model_id@version``) names the model that made the query
        vectors; a mismatch with the version read is refused rather than answered wrongly.

        Raises:
            NotFoundError: unknown collection, or no version serves reads.
            DataError: queries of the wrong dimension or model, or NaN.
            AccessDeniedError: ``access`` does not reach the collection.
        """
        if access is not None:
            access.check("search", tenant, collection)
        plan = self._plans.get((tenant, collection))
        if (
            plan is not None
            and plan.one is not None
            and model is None
            and type(queries) is _ndarray
            and queries.dtype is F32
            and queries.shape == plan.shape  # hnswlib does not check a 1-D query's length
            and _monotonic() < plan.until
            and not plan.changed
        ):
            # The serving hot path: one query, nothing to lay over it, no canary. Measured
            # after a search, every numpy call here costs about 1 us (a search is ~50) and every
            # object reached a cache miss: this path makes no numpy call but the search and the
            # two reads of its answer (the nearest distance, the ids' view), and reaches only
            # the plan.
            found = plan.one(queries, k)
            if found is not None:
                return SearchResult(plan.version, plan.index, found[0], found[1])
        if plan is None or time.monotonic() >= plan.until:
            routed = self.routing(tenant, collection)
            if routed.read_version is None:
                raise NotFoundError(f"{tenant}/{collection} has no version serving reads")
            self._refreshed(tenant, collection)
            plan = self._plan(tenant, collection, routed)
        view = plan.view
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        record = plan.record
        emb = record.embedding
        if model is not None and model not in (emb.model_id, model_key(emb)):
            raise DataError(
                f"queries were embedded by {model} but {tenant}/{collection} serves vectors of "
                f"{model_key(emb)}; embed them with that model, or send the text (search_text)"
            )
        if q.ndim != 2 or q.shape[1] != emb.dimension:
            raise DataError(
                f"queries have dimension {q.shape[-1]} but {tenant}/{collection} serves "
                f"{emb.dimension}-dimensional vectors ({model_key(emb)})"
            )
        version, index = plan.version, plan.index
        _check_finite(q)
        if plan.searcher is not None and not plan.changed:
            # The common case: no canary, no shadow, and (checked against the overlay, which
            # holds every write this router has seen, read no longer ago than the plan was
            # made) no record changed since the router started: the search and nothing else.
            d, i = plan.searcher.search(q, k)
            return SearchResult(version, index, d, i)
        if self._plain(tenant, collection, view):
            # No canary, no shadow: the search, laid over the change log.
            d, i = self._search_version(tenant, collection, version, index, q, k, record)
            return SearchResult(version, index, d, i)
        assert view.candidate_version is not None  # not plain: a candidate takes reads
        side = bucket(key if key is not None else q.tobytes().hex())
        if side < view.ramp_percent:
            version, index = view.candidate_version, view.candidate_index
        began = time.perf_counter()
        d, i = self._search_version(tenant, collection, version, index, q, k)
        ms = (time.perf_counter() - began) * 1000
        shadowed = version != view.candidate_version
        if shadowed and view.shadow_percent > 0 and bucket(f"shadow:{side}") < view.shadow_percent:
            self._shadow(tenant, collection, view, q, k, i, ms)
        return SearchResult(version, index, d, i)

    def search_text(
        self,
        tenant: str,
        collection: str,
        texts: list[str],
        k: int,
        key: str | None = None,
        access: Principal | None = None,
    ) -> SearchResult:
        """k nearest neighbours of query texts, each embedded for the version it reads.

        The canary and shadow reads work as for vectors; a shadow read embeds the texts with the
        candidate's model on the shadow thread, off the response path.

        Raises:
            NotFoundError: unknown collection, or no version serves reads.
            DataError: a text that is empty or not a string.
            PreconditionError: the version's model cannot run and no adapter maps into it.
            AccessDeniedError: ``access`` does not reach the collection.
        """
        if access is not None:
            access.check("search", tenant, collection)
        texts = check_texts(texts)
        view = self.routing(tenant, collection)
        if view.read_version is None:
            raise NotFoundError(f"{tenant}/{collection} has no version serving reads")
        version, index = view.read_version, view.read_index
        canary = view.candidate_version is not None and (
            view.ramp_percent > 0 or view.shadow_percent > 0
        )
        side = bucket(key if key is not None else "\x1f".join(texts)) if canary else 100.0
        if canary and side < view.ramp_percent:
            version, index = str(view.candidate_version), view.candidate_index
        path = self._path(tenant, collection, version)
        q = path(texts)
        began = time.perf_counter()
        d, i = self._search_version(tenant, collection, version, index, q, k)
        ms = (time.perf_counter() - began) * 1000
        shadowed = canary and version != view.candidate_version
        if shadowed and view.shadow_percent > 0 and bucket(f"shadow:{side}") < view.shadow_percent:
            candidate = str(view.candidate_version)
            self._shadow(
                tenant,
                collection,
                view,
                lambda: self._path(tenant, collection, candidate)(texts),
                k,
                i,
                ms,
            )
        return SearchResult(version, index, d, i, via=path.via)

    def _path(self, tenant: str, collection: str, version: str) -> QueryPath:
        """How texts reach ``version``'s space, re-checked every ``refresh_seconds`` (a model
        can be marked unavailable while routers run)."""
        record, _ = self._version(tenant, collection, version)
        # Per collection: an adapter serves the collection it was fitted on, no other.
        key = (tenant, collection, model_key(record.embedding))
        cached = self._paths.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.refresh_seconds:
            return cached[1]
        path = query_path(self.registry, record.embedding, tenant, collection)
        with self._lock:
            self._paths[key] = (time.monotonic(), path)
        return path

    def _schema(self, tenant: str, collection: str, version: str) -> EmbeddingSchema:
        return self._version(tenant, collection, version)[0].embedding

    def _plain(self, tenant: str, collection: str, view: RoutingView) -> bool:
        """Whether every read goes to the read version (no canary, no shadow reads, or a
        candidate of another model, which vector queries cannot reach)."""
        return (
            view.candidate_version is None
            or (view.ramp_percent <= 0 and view.shadow_percent <= 0)
            or self._other_model(tenant, collection, view)
        )

    def _plan(self, tenant: str, collection: str, view: RoutingView) -> _Plan:
        assert view.read_version is not None
        record, _ = self._version(tenant, collection, view.read_version)
        searcher = None
        if view.read_index is not None and self._plain(tenant, collection, view):
            found = self.searcher(view.read_index)
            if not isinstance(found, NativeIndex):
                searcher = found
        # Valid as long as the routing row it was made from and the overlay read with it.
        at = self._routes[(tenant, collection)][0]
        overlay = self._overlay(tenant, collection)
        one = None
        if isinstance(searcher, ShardedIndex) and len(searcher.shards) == 1:
            one = searcher.shards[0].search_one
        assert overlay.last is not None
        plan = _Plan(
            view,
            view.read_version,
            view.read_index,
            record,
            searcher,
            overlay.last,
            one,
            (record.embedding.dimension,),
            min(at, overlay.read_at) + self.refresh_seconds,
        )
        with self._lock:
            self._plans[(tenant, collection)] = plan
        return plan

    def _other_model(self, tenant: str, collection: str, view: RoutingView) -> bool:
        """Whether the candidate is made by another model than the read version."""
        if view.candidate_version is None or view.read_version is None:
            return False
        a = self._schema(tenant, collection, view.read_version)
        b = self._schema(tenant, collection, view.candidate_version)
        return model_key(a) != model_key(b)

    def _search_version(
        self,
        tenant: str,
        collection: str,
        version: str,
        index_id: str | None,
        queries: Vectors,
        k: int,
        record: VersionRecord | None = None,
    ) -> tuple[Distances, Ids]:
        if index_id is None or record is None:
            record, store = self._version(tenant, collection, version)
        if index_id is None:
            return store.search(queries, k, metric=str(record.embedding.metric))
        searcher = self.searcher(index_id)
        if isinstance(searcher, NativeIndex):
            return searcher.search(queries, k)  # the database's own index: always current
        delta = self._delta(tenant, collection, self._index_position(index_id))
        if delta is None:
            return searcher.search(queries, k)
        record, store = self._version(tenant, collection, version)
        metric = str(record.embedding.metric)
        stale_ids, live_ids, live_raw = delta
        # Over-fetch just enough to have k results left once stale ones are dropped: start
        # small (most results are untouched) and widen only for queries that come up short.
        fetch = min(2 * k + 10, k + len(stale_ids))
        while True:
            d, i = searcher.search(queries, fetch)
            stale = np.isin(i, stale_ids)
            short = ((i >= 0) & ~stale).sum(axis=1).min() < min(k, len(i[0]))
            if not short or fetch >= k + len(stale_ids):
                break
            fetch = min(fetch * 4, k + len(stale_ids))
        d = np.where(stale, np.inf, d)
        i = np.where(stale, -1, i)
        exact = ExactKnn(queries, k, metric)
        if len(live_ids):
            # The log holds each write's vector as the client sent it (the serving version's
            # space): no store round trip, and the version's own transform applies. Across
            # models (or when the log mixes spaces) the version's own vectors are read instead.
            view = self.routing(tenant, collection)
            written, _ = self._version(tenant, collection, view.read_version or version)
            same = model_key(written.embedding) == model_key(record.embedding)
            if same and live_raw.shape[1] == written.embedding.dimension:
                _, transform = make_transform(written.embedding, record.embedding)
                exact.add(live_ids, transform(live_raw))
            else:
                found_ids, found = store.fetch(live_ids)
                exact.add(found_ids, found)
        return merge_topk([(d, i), exact.result()], k)

    def _index_position(self, index_id: str) -> int:
        known = self._positions.get(index_id)
        if known is None:
            known = self.log.index_position(index_id)
            with self._lock:
                self._positions[index_id] = known
        return known

    def _overlay(self, tenant: str, collection: str) -> _Overlay:
        overlay = self._overlays.get((tenant, collection))
        if overlay is None:
            with self._lock:
                overlay = self._overlays.setdefault((tenant, collection), _Overlay(last={}))
        return overlay

    def _refreshed(self, tenant: str, collection: str) -> _Overlay:
        """The collection's overlay, with other routers' writes read from the log if the last
        read is ``refresh_seconds`` old (this router's own writes are in it at once)."""
        overlay = self._overlay(tenant, collection)
        if time.monotonic() - overlay.read_at >= self.refresh_seconds:
            while True:
                batch = self.log.read(tenant, collection, overlay.seq, 50_000)
                if not len(batch):
                    break
                with self._lock:
                    for seq, record_id, op, vec in zip(
                        batch.seqs.tolist(),
                        batch.ids.tolist(),
                        batch.ops,
                        batch.vectors,
                        strict=True,
                    ):
                        overlay.note(seq, record_id, op, vec)
                    overlay.seq = max(overlay.seq, batch.last_seq)
            overlay.read_at = time.monotonic()
        return overlay

    def _delta(
        self, tenant: str, collection: str, position: int
    ) -> tuple[Ids, Ids, Vectors] | None:
        """Records changed since ``position`` as arrays: every changed id (stale in an index
        built before), and the ids and vectors of those that now exist.

        The arrays are rebuilt from the whole overlay at most every ``refresh_seconds`` (or
        when many changes piled up); in between, the few entries noted since are laid over them.
        """
        overlay = self._refreshed(tenant, collection)
        if not overlay.last:
            return None  # no write since this router started, anywhere
        with self._lock:
            assert overlay.last is not None
            base = overlay.arrays.get(position)
            fresh = time.monotonic() - overlay.built_at < self.refresh_seconds
            if base is None or not fresh or len(overlay.recent) > 256:
                items = [(r, op, v) for r, (seq, op, v) in overlay.last.items() if seq > position]
                base = _arrays(items)
                overlay.arrays = {position: base}
                overlay.recent = {}
                overlay.built_at = time.monotonic()
            recent = [(r, op, v) for r, (seq, op, v) in overlay.recent.items() if seq > position]
        if recent:
            extra = _arrays(recent)
            keep = ~np.isin(base[1], extra[0])
            live = np.concatenate([base[1][keep], extra[1]])
            kept = base[2][keep]
            if kept.shape[1] == extra[2].shape[1] or not len(kept) or not len(extra[2]):
                parts = [v for v in (kept, extra[2]) if len(v)]
                vectors = np.concatenate(parts) if parts else extra[2]
            else:  # spaces differ: the search reads these records from the store
                vectors = np.empty((len(live), 0), np.float32)
            base = (np.union1d(base[0], extra[0]), live, vectors)
        return base if len(base[0]) else None

    def _noted(
        self,
        tenant: str,
        collection: str,
        last_seq: int,
        op: str,
        ids: Ids,
        vectors: Vectors | None,
    ) -> None:
        """Put this router's own logged write into its overlay (a batch's numbers are
        consecutive: appends hold the log's write lock)."""
        overlay = self._overlay(tenant, collection)
        first = last_seq - len(ids) + 1
        raw = None if vectors is None else np.ascontiguousarray(vectors, dtype="<f4")
        with self._lock:
            for n, record_id in enumerate(ids.tolist()):
                vec = None if raw is None else raw[n].tobytes()
                overlay.note(first + n, int(record_id), op, vec)

    # -- shadow reads -------------------------------------------------------------------------

    def _shadow(
        self,
        tenant: str,
        collection: str,
        view: RoutingView,
        queries: Vectors | Callable[[], Vectors],
        k: int,
        served: Ids,
        served_ms: float,
    ) -> None:
        with self._lock:
            if self._shadow_in_flight >= 8:
                return  # shadowing must never queue up behind live traffic
            self._shadow_in_flight += 1

        def run() -> None:
            sample = ShadowSample(
                tenant=tenant,
                collection=collection,
                candidate=str(view.candidate_version),
                ms_old=served_ms,
            )
            try:
                q = queries() if callable(queries) else queries
                began = time.perf_counter()
                _, found = self._search_version(
                    tenant,
                    collection,
                    str(view.candidate_version),
                    view.candidate_index,
                    q,
                    k,
                )
                sample.ms_new = (time.perf_counter() - began) * 1000
                sample.overlap = _overlap(served, found)
            except Exception:
                sample.error = True
            finally:
                with self._lock:
                    self._shadow_in_flight -= 1
                    self._shadow_buffer.append(sample)
            self._flush_shadow()

        self._shadow_pool.submit(run)

    def _flush_shadow(self, force: bool = False) -> None:
        with self._lock:
            due = len(self._shadow_buffer) >= 20 or time.monotonic() - self._shadow_flushed > 1
            if not (force or due) or not self._shadow_buffer:
                return
            samples, self._shadow_buffer = self._shadow_buffer, []
            self._shadow_flushed = time.monotonic()
        self.shadow_log.record(samples)

    # -- writes -------------------------------------------------------------------------------

    def _writable(self, tenant: str, collection: str) -> tuple[RoutingView, VersionRecord]:
        view = self.routing(tenant, collection)
        if view.writes_paused:
            raise WritesPausedError(
                f"writes to {tenant}/{collection} are paused while it migrates offline"
            )
        if not view.write_versions:
            raise NotFoundError(f"{tenant}/{collection} has no version taking writes")
        # Writes come in the embedding space of the version that serves reads.
        live = view.read_version or view.write_versions[0]
        record, _ = self._version(tenant, collection, live)
        return view, record

    def upsert(
        self,
        tenant: str,
        collection: str,
        ids: Ids,
        vectors: Vectors | None = None,
        texts: list[str] | None = None,
        access: Principal | None = None,
    ) -> int:
        """Write records to every write version; returns their last change-log number.

        ``vectors`` are in the space of the version serving reads. With ``texts``, each write
        version embeds them with its own model (``vectors``, if also given, are used for
        versions of the read version's model), and the texts are kept with the records. While
        the collection moves to a new model, writes must carry texts.

        Raises:
            DataError: wrong dimension, NaN, bad ids, missing texts; nothing was written.
            WritesPausedError: an offline migration holds writes.
            AccessDeniedError: ``access`` may not write the collection.
        """
        if access is not None:
            access.check("write", tenant, collection)
        view, live = self._writable(tenant, collection)
        scope = Scope(tenant, collection, live.version)
        if texts is not None:
            texts = check_texts(texts)
        elif vectors is None:
            raise DataError("an upsert needs vectors or texts")
        live_key = model_key(live.embedding)
        raw: Vectors | None = None
        if vectors is not None:  # checked once, whatever the number of write versions
            ids_ok, raw = check_vectors(ids, vectors, live.embedding.dimension, scope)
        planned: list[tuple[VectorStore, Vectors]] = []
        logged: Vectors | None = None
        for name in view.write_versions:
            record, store = self._version(tenant, collection, name)
            if raw is not None and model_key(record.embedding) == live_key:
                _, transform = make_transform(live.embedding, record.embedding)
                made = transform(raw)
            elif texts is not None:
                # A model's output is checked like a client's vectors (dimension, NaN).
                ids_ok, made = check_vectors(
                    ids,
                    self._path(tenant, collection, name).records(texts),
                    record.embedding.dimension,
                    store.scope,
                )
            else:
                raise DataError(
                    f"{tenant}/{collection}@{name} is made by {model_key(record.embedding)}, "
                    f"not {live_key}: while the collection moves to a new embedding model, "
                    "write texts (upsert with texts) so that every version can embed them"
                )
            planned.append((store, made))
            if name == live.version:
                logged = made
        if texts is not None and len(texts) != len(ids_ok):
            raise DataError(f"{len(ids_ok)} ids but {len(texts)} texts; pass one text per id")
        seq = self.log.append(tenant, collection, UPSERT, ids_ok, logged, texts)
        self._noted(tenant, collection, seq, UPSERT, ids_ok, logged)
        for store, made in planned:
            store.upsert(ids_ok, made)
        return seq

    def delete(
        self, tenant: str, collection: str, ids: Ids, access: Principal | None = None
    ) -> int:
        """Delete records from every write version (a tombstone in the change log).

        Raises:
            DataError: ids that are not integers.
            WritesPausedError: an offline migration holds writes.
            AccessDeniedError: ``access`` may not write the collection.
        """
        if access is not None:
            access.check("write", tenant, collection)
        view, _ = self._writable(tenant, collection)
        arr = np.asarray(ids)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"ids must be a list of integers, got {arr.dtype}")
        seq = self.log.append(tenant, collection, DELETE, arr.astype(np.int64))
        self._noted(tenant, collection, seq, DELETE, arr.astype(np.int64), None)
        for name in view.write_versions:
            _, store = self._version(tenant, collection, name)
            store.delete(arr.astype(np.int64))
        return seq


def _arrays(items: list[tuple[int, str, bytes | None]]) -> tuple[Ids, Ids, Vectors]:
    """(changed ids, ids that exist now, their vectors as written) from overlay entries.

    When the entries do not all hold a vector of one size (writes before and after a change of
    model, or texts logged without one), the vectors come back with no columns: the search
    then reads them from the version's store.
    """
    changed = np.fromiter((r for r, _, _ in items), np.int64, len(items))
    live = [(r, v) for r, op, v in items if op == UPSERT]
    ids = np.fromiter((r for r, _ in live), np.int64, len(live))
    sizes = {len(v) if v is not None else -1 for _, v in live}
    if len(sizes) != 1 or -1 in sizes:
        return changed, ids, np.empty((len(live), 0), np.float32)
    raw = np.frombuffer(b"".join(v for _, v in live if v is not None), dtype="<f4")
    dim = raw.size // len(live) if live else 0
    return changed, ids, raw.reshape(len(live), dim).astype(np.float32)


def _overlap(a: Ids, b: Ids) -> float:
    """Mean share of one result list found in the other, over queries (-1 padding ignored)."""
    shares = []
    for row_a, row_b in zip(a, b, strict=True):
        left = {int(x) for x in row_a if x >= 0}
        if left:
            shares.append(len(left & {int(x) for x in row_b if x >= 0}) / len(left))
    return float(np.mean(shares)) if shares else 1.0
