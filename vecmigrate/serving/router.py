"""The router applications use for search, upsert and delete.

It follows the collection's routing row. Once per routing generation it resolves everything a
request needs into a plan (``vecmigrate.serving.plan``): the versions the row names, their
records, store handles, loaded indexes and models. A request then runs straight through the plan
to a store or an index; the planner (``vecmigrate.serving.planner``), on a thread of the router's
own, re-reads the routing row every ``refresh_seconds`` and builds the next plan beside the one
serving.

* reads go to the row's read version, except ``ramp_percent`` of them, chosen by a stable hash
  of the request key (the same user always lands on the same side), which go to the candidate;
* ``shadow_percent`` of reads are also run on the candidate on a side thread, never delaying or
  changing the response, and each pair's overlap@k and latencies are recorded for the gates
  (and, while a migration tunes the candidate's search parameter, tried with each candidate
  value: ``vecmigrate.serving.tuning``); under the migration's latency budget, a smaller share
  of them while the search p99 is over it (``vecmigrate.data.budget.MirrorBudget``);
* writes are checked (dimension, NaN) before anything is written, logged in the change log
  (which numbers them), then applied to every write version; while ``writes_paused`` (an
  offline migration) they are refused with :class:`WritesPausedError`.

Text goes in, too. ``search_text`` embeds each query with the model of the version it reads (or,
when that model is marked unavailable, with an available model through a registered adapter),
and a write that carries texts is embedded by each write version's own model: during a move to a
new embedding model both versions stay current. A raw query vector must match the version it
reads: its dimension always, and its model when the caller names it; while versions of two
models serve, raw vectors are answered by the read version only (no canary, no shadow).

Writes reach the indexes served from memory: each is staged on them the moment it is logged (a
search lays it over the index, so an acknowledged write is seen at once and a deleted record
never comes back) and applied to the index itself in the background; writes of other routers
are read from the change log every ``refresh_seconds``. See ``vecmigrate.indexes.live``.
With ``refresh_seconds=0`` every request reads the routing row and the log first (tests).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from vecmigrate.catalog.catalog import Catalog, VersionRecord
from vecmigrate.catalog.changelog import DELETE, UPSERT, ChangeLog
from vecmigrate.data.budget import MirrorBudget
from vecmigrate.data.transforms import make_transform
from vecmigrate.embedding.reembed import QueryPath, query_path
from vecmigrate.embedding.registry import Registry
from vecmigrate.errors import DataError, NotFoundError, VecmigrateError
from vecmigrate.indexes.artifacts import F32
from vecmigrate.indexes.build import NativeIndex
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.records import Filter
from vecmigrate.model.routing import RoutingView
from vecmigrate.records.filters import normalize
from vecmigrate.records.vectors import (
    Distances,
    Ids,
    Vectors,
    check_texts,
    check_vectors,
)
from vecmigrate.security.credentials import Principal
from vecmigrate.serving.latency import LatencyMonitor
from vecmigrate.serving.plan import Plan, Side
from vecmigrate.serving.planner import Planner
from vecmigrate.serving.tuning import Trials
from vecmigrate.stores import VectorStore
from vecmigrate.validation.shadow import ShadowLog, ShadowSample
from vecmigrate.validation.tuning import TuningLog


class WritesPausedError(VecmigrateError):
    """Writes to this collection are paused (an offline migration); retry after a while."""

    retry_after = 5


class SearchResult(NamedTuple):
    """Neighbours and where they came from."""

    version: str
    index: str | None  # type: ignore[assignment]  # the field hides tuple.index, by design
    distances: Distances
    ids: Ids
    # How the query reached the version: "vectors", or the model (and adapter) that embedded it.
    via: str = "vectors"


# The hot path makes its result with the tuple's own constructor (C): a class's ``__init__`` or
# ``__new__`` written in Python is a frame, ~0.3 us after a search.
_result = tuple.__new__


def bucket(key: str) -> float:
    """A stable position in [0, 100) for a request key (the canary split)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 10_000 / 100.0


# The hot path's names, bound once: after a search, reaching ``np.ndarray`` through its module
# costs a cache miss or two (~0.3 us a lookup in paired timings).
_ndarray = np.ndarray
_clock = time.perf_counter


def _check_finite(q: Vectors) -> None:
    if not np.isfinite(q).all():
        raise DataError("queries contain NaN or infinity")


def _check_filter(flt: Filter | None, read: Side) -> None:
    """A filter on a field the collection does not have, or of the wrong kind, is refused
    before anything is searched (``DataError`` naming the field)."""
    if flt is not None:
        normalize(flt, read.store.schema)


class Router:
    """Search and write a collection through whatever its routing row says."""

    def __init__(
        self, catalog: Catalog, refresh_seconds: float = 1.0, shadow_threads: int = 2
    ) -> None:
        self.catalog = catalog
        self.refresh_seconds = refresh_seconds
        self.log = ChangeLog(catalog)
        self.shadow_log = ShadowLog(catalog)
        self.registry = Registry(catalog)
        self.planner = Planner(catalog, self.log, refresh_seconds)
        # Search-parameter candidates tried on shadow reads (``vecmigrate.serving.tuning``).
        self.trials = Trials(TuningLog(catalog))
        # The planner's plans, read by the hot path without a call.
        self._plans = self.planner.plans
        self._paths: dict[tuple[str, str, str], tuple[float, QueryPath]] = {}
        self._lock = threading.Lock()
        self._shadow_pool = ThreadPoolExecutor(shadow_threads, thread_name_prefix="shadow")
        self._shadow_in_flight = 0
        self._shadow_buffer: list[ShadowSample] = []
        self._shadow_flushed = time.monotonic()
        # Search latencies per collection, published once a second for latency budgets; after
        # each publication the share of shadow reads to mirror is decided again.
        self.mirror = MirrorBudget(catalog)
        self.latency = LatencyMonitor(catalog)
        self.latency.after_tick = self._pace_mirroring

    def close(self) -> None:
        """Stop the background thread, finish shadow reads in flight and write their samples."""
        self.latency.close()
        self.planner.close()
        self._shadow_pool.shutdown(wait=True)
        self._flush_shadow(force=True)

    # -- plans --------------------------------------------------------------------------------

    def preload(self) -> list[tuple[str, str]]:
        """Load the plan of every collection the catalog routes now rather than on its first
        request, and those routed later in the background (see ``Planner.preload``); the
        collections loaded."""
        return self.planner.preload()

    def routing(self, tenant: str, collection: str) -> RoutingView:
        """The routing row the current plan follows.

        Raises:
            NotFoundError: the collection has no routing row.
        """
        return self.planner.current(tenant, collection).view

    def searcher(self, index_id: str) -> LiveIndex | NativeIndex:
        """The index this router serves ``index_id`` from, as loaded (its artifacts with the
        change log applied), or the database's own index."""
        return self.planner.searcher(index_id)

    def settle(self, tenant: str, collection: str, timeout: float = 60.0) -> None:
        """Wait until every write staged on the collection's indexes is in the indexes
        themselves.

        Raises:
            TimeoutError: not done in ``timeout`` seconds.
        """
        self.planner.settle(tenant, collection, timeout)

    def _version(
        self, tenant: str, collection: str, version: str
    ) -> tuple[VersionRecord, VectorStore]:
        return self.planner.version(tenant, collection, version)

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
        flt: Filter | None = None,
        timed: bool = True,
    ) -> SearchResult:
        """k nearest neighbours from the version the routing row gives this request (among
        the records whose payload matches ``flt``, if given: see ``Side.search``).

        ``access``, the caller's credential, must allow searching this tenant's collection
        (checked before anything about the collection is looked up).

        ``key`` (a user or session id) decides the canary side; without one the query bytes do.
        ``model`` (``model_id`` or ``model_id@version``) names the model that made the query
        vectors; a mismatch with the version read is refused rather than answered wrongly.

        ``timed``: count this search's milliseconds in the latencies the router publishes for
        latency budgets. A caller that times the whole request instead (the gateway: what its
        clients wait for) passes False and records its own time (``latency.samples``).

        Raises:
            NotFoundError: unknown collection, or no version serves reads.
            DataError: queries of the wrong dimension or model, or NaN.
            AccessDeniedError: ``access`` does not reach the collection.
        """
        if access is not None:
            access.check("search", tenant, collection)
        t0 = _clock()
        plan = self._plans.get((tenant, collection))
        if (
            plan is not None
            and plan.one is not None
            and flt is None
            and model is None
            and type(queries) is _ndarray
            and queries.dtype is F32
            and queries.shape == plan.shape  # hnswlib does not check a 1-D query's length
        ):
            # The serving hot path: one query, one index, nothing to decide. Measured after a
            # search, every numpy call here costs about 1 us (a search is ~30-80) and every
            # object reached a cache miss: this path reaches the plan and the index only.
            found = plan.one(queries, k)
            if found is not None:
                if timed:
                    self.latency.samples[(tenant, collection)].append((_clock() - t0) * 1000)
                return _result(SearchResult, (plan.version, plan.index, *found, "vectors"))
        plan = self.planner.current(tenant, collection)
        read = plan.read
        if read is None:
            raise NotFoundError(f"{tenant}/{collection} has no version serving reads")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        emb = read.record.embedding
        if model is not None and model not in (emb.model_id, read.model):
            raise DataError(
                f"queries were embedded by {model} but {tenant}/{collection} serves vectors of "
                f"{read.model}; embed them with that model, or send the text (search_text)"
            )
        if q.ndim != 2 or q.shape[1] != emb.dimension:
            raise DataError(
                f"queries have dimension {q.shape[-1]} but {tenant}/{collection} serves "
                f"{emb.dimension}-dimensional vectors ({read.model})"
            )
        _check_finite(q)
        _check_filter(flt, read)
        candidate = plan.candidate
        if candidate is None or not plan.vectors_canary:
            d, i = read.search(q, k, flt)
            if timed:
                self.latency.samples[(tenant, collection)].append((_clock() - t0) * 1000)
            return SearchResult(read.version, read.index, d, i)
        view = plan.view
        side = bucket(key if key is not None else q.tobytes().hex())
        served = candidate if side < view.ramp_percent else read
        began = time.perf_counter()
        d, i = served.search(q, k, flt)
        ms = (time.perf_counter() - began) * 1000
        if (
            served is read
            and view.shadow_percent > 0
            and bucket(f"shadow:{side}")
            < view.shadow_percent * self.mirror.share(tenant, collection)
        ):
            self._shadow(tenant, collection, candidate, q, k, i, ms, flt, view.ramp_percent)
        if timed:
            self.latency.samples[(tenant, collection)].append((_clock() - t0) * 1000)
        return SearchResult(served.version, served.index, d, i)

    def search_text(
        self,
        tenant: str,
        collection: str,
        texts: list[str],
        k: int,
        key: str | None = None,
        access: Principal | None = None,
        flt: Filter | None = None,
    ) -> SearchResult:
        """k nearest neighbours of query texts, each embedded for the version it reads (among
        the records whose payload matches ``flt``, if given).

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
        plan = self.planner.current(tenant, collection)
        read, candidate = plan.read, plan.candidate
        if read is None:
            raise NotFoundError(f"{tenant}/{collection} has no version serving reads")
        _check_filter(flt, read)
        view = plan.view
        side = bucket(key if key is not None else "\x1f".join(texts)) if candidate else 100.0
        served = candidate if candidate is not None and side < view.ramp_percent else read
        path = self._path(served)
        q = path(texts)
        began = time.perf_counter()
        d, i = served.search(q, k, flt)
        ms = (time.perf_counter() - began) * 1000
        shadowed = candidate is not None and served is read
        mirrored = view.shadow_percent * self.mirror.share(tenant, collection)
        if shadowed and mirrored > 0 and bucket(f"shadow:{side}") < mirrored:
            assert candidate is not None
            self._shadow(
                tenant,
                collection,
                candidate,
                lambda: self._path(candidate)(texts),
                k,
                i,
                ms,
                flt,
                view.ramp_percent,
            )
        return SearchResult(served.version, served.index, d, i, via=path.via)

    def _path(self, side: Side) -> QueryPath:
        """How texts reach ``side``'s space, re-checked every ``refresh_seconds`` (a model can
        be marked unavailable while routers run)."""
        # Per collection: an adapter serves the collection it was fitted on, no other.
        scope = side.store.scope
        key = (scope.tenant, scope.collection, side.model)
        cached = self._paths.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.refresh_seconds:
            return cached[1]
        path = query_path(self.registry, side.record.embedding, scope.tenant, scope.collection)
        with self._lock:
            self._paths[key] = (time.monotonic(), path)
        return path

    # -- shadow reads -------------------------------------------------------------------------

    def _pace_mirroring(self) -> None:
        """Decide again, for each collection whose reads are shadowed, the share of them to
        mirror under the latency budget of the migration that made the candidate (its
        ``budget``; without one, all of ``shadow_percent``)."""
        for (tenant, collection), plan in list(self._plans.items()):
            candidate = plan.candidate
            if candidate is not None and plan.view.shadow_percent > 0:
                self.mirror.update(tenant, collection, candidate.record.migration_id)

    def _shadow(
        self,
        tenant: str,
        collection: str,
        candidate: Side,
        queries: Vectors | Callable[[], Vectors],
        k: int,
        served: Ids,
        served_ms: float,
        flt: Filter | None = None,
        ramp_percent: float = 0.0,
    ) -> None:
        with self._lock:
            if self._shadow_in_flight >= 8:
                return  # shadowing must never queue up behind live traffic
            self._shadow_in_flight += 1

        def run() -> None:
            sample = ShadowSample(
                tenant=tenant,
                collection=collection,
                candidate=candidate.version,
                ms_old=served_ms,
            )
            try:
                q = queries() if callable(queries) else queries
                with self.trials.guard(candidate):  # no trial changes the index under it
                    began = time.perf_counter()
                    _, found = candidate.search(q, k, flt)
                    sample.ms_new = (time.perf_counter() - began) * 1000
                sample.overlap = _overlap(served, found)
                if flt is None:
                    self.trials.run(candidate, q, ramp_percent)
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

    def _writable(self, tenant: str, collection: str) -> tuple[Plan, Side]:
        plan = self.planner.current(tenant, collection)
        if plan.view.writes_paused:
            raise WritesPausedError(
                f"writes to {tenant}/{collection} are paused while it migrates offline"
            )
        if not plan.writes or plan.live is None:
            raise NotFoundError(f"{tenant}/{collection} has no version taking writes")
        return plan, plan.live

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
        plan, live = self._writable(tenant, collection)
        if texts is not None:
            texts = check_texts(texts)
        elif vectors is None:
            raise DataError("an upsert needs vectors or texts")
        raw: Vectors | None = None
        if vectors is not None:  # checked once, whatever the number of write versions
            ids_ok, raw = check_vectors(ids, vectors, live.dimension, live.store.scope)
        made_by: dict[str, Vectors] = {}
        for side in plan.writes:
            if raw is not None and side.model == live.model:
                _, transform = make_transform(live.record.embedding, side.record.embedding)
                made = transform(raw)
            elif texts is not None:
                # A model's output is checked like a client's vectors (dimension, NaN).
                ids_ok, made = check_vectors(
                    ids, self._path(side).records(texts), side.dimension, side.store.scope
                )
            else:
                raise DataError(
                    f"{tenant}/{collection}@{side.version} is made by {side.model}, not "
                    f"{live.model}: while the collection moves to a new embedding model, "
                    "write texts (upsert with texts) so that every version can embed them"
                )
            made_by[side.version] = made
        if texts is not None and len(texts) != len(ids_ok):
            raise DataError(f"{len(ids_ok)} ids but {len(texts)} texts; pass one text per id")
        logged = made_by.get(live.version)
        seq = self.log.append(tenant, collection, UPSERT, ids_ok, logged, texts, space=live.model)
        self.planner.stage_write(
            tenant, collection, seq - len(ids_ok), seq, UPSERT, ids_ok, made_by
        )
        for side in plan.stored:
            side.store.upsert(ids_ok, made_by[side.version])
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
        plan, _ = self._writable(tenant, collection)
        arr = np.asarray(ids)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"ids must be a list of integers, got {arr.dtype}")
        gone = arr.astype(np.int64)
        seq = self.log.append(tenant, collection, DELETE, gone)
        self.planner.stage_write(tenant, collection, seq - len(gone), seq, DELETE, gone, {})
        for side in plan.stored:
            side.store.delete(gone)
        return seq


def _overlap(a: Ids, b: Ids) -> float:
    """Mean share of one result list found in the other, over queries (-1 padding ignored)."""
    shares = []
    for row_a, row_b in zip(a, b, strict=True):
        left = {int(x) for x in row_a if x != -1}
        if left:
            shares.append(len(left & {int(x) for x in row_b if x != -1}) / len(left))
    return float(np.mean(shares)) if shares else 1.0
