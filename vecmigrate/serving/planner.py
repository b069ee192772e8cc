"""Plans of the collections a router serves, and the in-memory indexes they serve from.

A plan is made once per routing generation (``vecmigrate.serving.plan``) and replaced when the
routing row moves on; the router's background thread (``vecmigrate.serving.upkeep``) refreshes
the plans every ``refresh_seconds``, stages other routers' writes from the change log on the
indexes they serve, applies staged writes to those indexes, and swaps an index for a newer
compaction when its overlay keeps what only a compaction folds in. Requests only read plans;
everything that asks the catalog is here.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pydantic import TypeAdapter

from vecmigrate.catalog.catalog import Catalog, VersionRecord
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.data.transforms import make_transform
from vecmigrate.embedding.registry import model_key
from vecmigrate.errors import NotFoundError
from vecmigrate.indexes.build import NativeIndex, NativeStore
from vecmigrate.indexes.live import LOG_PAGE, LiveIndex, NetChanges, open_live
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import IndexSpec, Metric, is_native, store_ref
from vecmigrate.records.vectors import Ids, Vectors
from vecmigrate.serving import heap
from vecmigrate.serving.plan import Plan, Side, distinct_records
from vecmigrate.serving.tuning import Tuned
from vecmigrate.serving.upkeep import Upkeep
from vecmigrate.stores import Scope, VectorStore, open_store
from vecmigrate.validation.tuning import TuningLog

log = logging.getLogger("vecmigrate.router")

# Seconds before the background thread tries again to load a collection it could not.
RETRY_SECONDS = 60.0


@dataclass
class _Collection:
    """What the router keeps of one collection across plans."""

    # Held while changes are staged on the collection's indexes (in log order) and while a plan
    # is published, so that a write and a new plan never pass each other.
    lock: threading.Lock
    # Held while a plan is made (its indexes loaded): one load of each, writes not held up.
    planning: threading.Lock
    refreshed: float = float("-inf")


class Planner:
    """The plans of one router, made from its catalog (see the module's doc).

    With ``refresh_seconds=0`` plans are not refreshed in the background: every ``current``
    refreshes first.
    """

    def __init__(self, catalog: Catalog, log: ChangeLog, refresh_seconds: float) -> None:
        self.catalog = catalog
        self.log = log
        self.refresh_seconds = refresh_seconds
        # Set when the router is its process's own (`vecmigrate serve`): what a new plan
        # loaded is frozen out of the collector's full passes (``vecmigrate.serving.heap``).
        self.settle_heap = False
        # Read by the router's hot path without a lock (a dict read is atomic).
        self.plans: dict[tuple[str, str], Plan] = {}
        self._collections: dict[tuple[str, str], _Collection] = {}
        self._versions: dict[tuple[str, str, str], tuple[VersionRecord, VectorStore]] = {}
        self._indexes: dict[str, LiveIndex | NativeIndex] = {}
        self._lock = threading.Lock()
        self._upkeep: Upkeep | None = None
        self._closed = False
        self.tuned = Tuned(TuningLog(catalog))
        # After ``preload``: collections routed later are loaded by the background thread.
        self.follow_new = False
        self._looked_for_new = float("-inf")
        # Collections whose plan could not be made, and when to try again.
        self._failed: dict[tuple[str, str], float] = {}

    def close(self) -> None:
        """Stop the background thread."""
        self._closed = True
        if self._upkeep is not None:
            self._upkeep.stop()

    def current(self, tenant: str, collection: str) -> Plan:
        """The plan requests to a collection follow: the one in place, or (no plan yet, or
        ``refresh_seconds=0``) one refreshed now."""
        plan = self.plans.get((tenant, collection))
        if plan is not None and self.refresh_seconds > 0:
            return plan
        return self.refresh(tenant, collection)

    def _collection(self, tenant: str, collection: str) -> _Collection:
        found = self._collections.get((tenant, collection))
        if found is None:
            with self._lock:
                found = self._collections.setdefault(
                    (tenant, collection), _Collection(threading.Lock(), threading.Lock())
                )
        return found

    def refresh(self, tenant: str, collection: str) -> Plan:
        """Read the routing row: a new generation gets a new plan; then stage the log's new
        entries on the plan's indexes and swap an index for a newer compaction if it keeps an
        overlay.

        Raises:
            NotFoundError: the collection has no routing row.
        """
        state = self._collection(tenant, collection)
        view = self.catalog.get_routing(tenant, collection)
        if view is None:
            raise NotFoundError(f"unknown collection {tenant}/{collection}")
        with state.planning:
            old = self.plans.get((tenant, collection))
            plan = (
                old
                if old is not None and old.generation == view.generation
                else self._make_plan(tenant, collection, view)
            )
            with state.lock:
                # Writes staged while the plan was made: its indexes catch up with them here.
                self._follow(tenant, collection, plan)
                self._publish(tenant, collection, plan)
                state.refreshed = time.monotonic()
            plan = self._swap_compacted(tenant, collection, plan) or plan
        if self.settle_heap and plan is not old:
            heap.settle()
        self._start_upkeep()
        return plan

    def _publish(self, tenant: str, collection: str, plan: Plan) -> None:
        unused: list[LiveIndex] = []
        with self._lock:
            self.plans[(tenant, collection)] = plan
            used = {i.index_id for p in self.plans.values() for i in p.live_indexes()}
            for index_id, index in list(self._indexes.items()):
                if isinstance(index, LiveIndex) and index_id not in used:
                    unused.append(index)  # no plan serves it any more: free its memory
                    del self._indexes[index_id]
        retire(unused)

    def preload(self) -> list[tuple[str, str]]:
        """Make the plan of every collection the catalog routes (its indexes loaded, the change
        log's writes since applied), so that a collection's first request is served as its
        later ones are; the collections loaded. From then on the background thread loads a
        collection routed later within ``refresh_seconds`` of its routing row, before its first
        request if that comes later. One whose plan cannot be made (its store unreachable, say)
        is logged and tried again after ``RETRY_SECONDS``, or on its first request.
        """
        self.follow_new = True
        loaded = self._load_new()
        self._start_upkeep()
        return loaded

    def _load_new(self) -> list[tuple[str, str]]:
        """Make the plans of the routed collections that have none yet (see ``preload``)."""
        self._looked_for_new = time.monotonic()
        loaded: list[tuple[str, str]] = []
        for key in self.catalog.list_collections():
            if self._closed:
                break
            if key in self.plans or self._failed.get(key, 0.0) > self._looked_for_new:
                continue
            tenant, collection = key
            began = time.monotonic()
            try:
                plan = self.refresh(tenant, collection)
            except NotFoundError:
                continue  # registered, no routing row yet: nothing serves it
            except Exception:
                if key not in self._failed:
                    log.warning("loading %s/%s failed", tenant, collection, exc_info=True)
                self._failed[key] = self._looked_for_new + RETRY_SECONDS
                continue
            self._failed.pop(key, None)
            log.info(
                "loaded %s/%s (reads: %s, index %s) in %.2f s",
                tenant,
                collection,
                plan.version,
                plan.index,
                time.monotonic() - began,
            )
            loaded.append(key)
        return loaded

    def refresh_due(self) -> float:
        """Refresh every plan ``refresh_seconds`` old (the background thread's turn); the
        seconds until the next one is due."""
        now = time.monotonic()
        wait = self.refresh_seconds
        if self.follow_new and now - self._looked_for_new >= self.refresh_seconds:
            try:
                self._load_new()
            except Exception:  # the catalog unreachable: the next turn looks again
                log.warning("looking for newly routed collections failed", exc_info=True)
        for tenant, collection in list(self.plans):
            state = self._collection(tenant, collection)
            left = state.refreshed + self.refresh_seconds - now
            if left > 0:
                wait = min(wait, left)
                continue
            try:
                self.refresh(tenant, collection)
            except NotFoundError:
                with self._lock:
                    self.plans.pop((tenant, collection), None)
            except Exception:  # the plan in place keeps serving; the next turn tries again
                state.refreshed = now
                log.warning("refresh of %s/%s failed", tenant, collection, exc_info=True)
        return wait

    def served_indexes(self) -> list[LiveIndex]:
        """The in-memory indexes the router's plans serve from."""
        return [x for x in list(self._indexes.values()) if isinstance(x, LiveIndex)]

    def _start_upkeep(self) -> None:
        if self._upkeep is None and not self._closed:
            with self._lock:
                if self._upkeep is None:
                    self._upkeep = Upkeep(self)

    def _make_plan(self, tenant: str, collection: str, view: RoutingView) -> Plan:
        read = None
        if view.read_version is not None:
            read = self._side(tenant, collection, view.read_version, view.read_index)
        candidate = None
        takes_reads = view.ramp_percent > 0 or view.shadow_percent > 0
        if view.candidate_version is not None and takes_reads and read is not None:
            candidate = self._side(tenant, collection, view.candidate_version, view.candidate_index)
        # A version still written keeps the index an earlier plan served it from, kept current
        # (on standby): a rollback after a cut-over reads from it at once.
        previous = self.plans.get((tenant, collection))
        standby = {
            s.version: s.index
            for s in (previous.sides() if previous is not None else [])
            if isinstance(s.searcher, LiveIndex)
        }
        writes = tuple(
            read
            if read is not None and name == read.version
            else candidate
            if candidate is not None and name == candidate.version
            else self._side(tenant, collection, name, standby.get(name), load_index=name in standby)
            for name in view.write_versions
        )
        live = read if read is not None else (writes[0] if writes else None)
        vectors_canary = (
            candidate is not None and read is not None and candidate.model == read.model
        )
        one = None
        if (
            self.refresh_seconds > 0  # with 0, every request refreshes first
            and read is not None
            and candidate is None
            and isinstance(read.searcher, LiveIndex)
            and read.searcher.search_one_ready
        ):
            one = read.searcher.search_one
        return Plan(
            view=view,
            read=read,
            candidate=candidate,
            writes=writes,
            stored=distinct_records(writes),
            live=live,
            vectors_canary=vectors_canary,
            one=one,
            shape=(read.dimension,) if read is not None else (),
            version=None if read is None else read.version,
            index=None if read is None else read.index,
        )

    def _side(
        self,
        tenant: str,
        collection: str,
        version: str,
        index_id: str | None,
        *,
        load_index: bool = True,
    ) -> Side:
        record, store = self.version(tenant, collection, version)
        searcher = None
        if index_id is not None and load_index:
            loaded = self._index(index_id, record, store)
            # With the search parameters a migration chose for it, if one did.
            searcher = self.tuned.apply(index_id, loaded)
            if searcher is not loaded:  # a database's own index: a handle with them
                with self._lock:
                    self._indexes[index_id] = searcher
        return Side(version, index_id, record, store, searcher, model_key(record.embedding))

    def version(
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

    def _index(
        self, index_id: str, record: VersionRecord, store: VectorStore
    ) -> LiveIndex | NativeIndex:
        loaded = self._indexes.get(index_id)
        if loaded is not None:
            return loaded
        index_record = self.catalog.get_index(index_id)
        spec: IndexSpec = TypeAdapter(IndexSpec).validate_python(index_record.spec)
        if is_native(spec):
            assert isinstance(store, NativeStore)
            loaded = NativeIndex(store, spec, Metric(record.embedding.metric))
        else:
            beside = bool(self._indexes)  # indexes that serve already
            loaded = open_live(
                self.log,
                index_record,
                space=model_key(record.embedding),
                normalized=record.embedding.normalized,
                fetch=store.fetch,
                # Beside indexes that serve (a candidate loaded for shadow reads), its load
                # holds the GIL in short slices and its catch-up on the change log leaves
                # their searches the other cores.
                threads=1 if beside else -1,
                low_stall=beside,
            )
        with self._lock:
            self._indexes[index_id] = loaded
        return loaded

    def searcher(self, index_id: str) -> LiveIndex | NativeIndex:
        """The index this router serves ``index_id`` from, as loaded (its artifacts with the
        change log applied), or the database's own index."""
        loaded = self._indexes.get(index_id)
        if loaded is None:
            record = self.catalog.get_index(index_id)
            version, store = self.version(record.tenant, record.collection, record.version)
            loaded = self._index(index_id, version, store)
        return loaded

    def _swap_compacted(self, tenant: str, collection: str, plan: Plan) -> Plan | None:
        """Load a newer compaction of an index whose overlay keeps records only a compaction
        folds in, and serve from it (the old copy serves until then). Called with the
        collection's planning lock held."""
        keeping = [i for i in plan.live_indexes() if i.kept]
        if not keeping:
            return None
        newer = self.log.compacted_positions([i.index_id for i in keeping])
        fresh = [i for i in keeping if newer.get(i.index_id, -1) > i.base]
        if not fresh:
            return None
        for old in fresh:
            side = next(s for s in plan.sides() if s.searcher is old)
            loaded = open_live(
                self.log,
                self.catalog.get_index(old.index_id),
                space=side.model,
                normalized=side.record.embedding.normalized,
                fetch=side.store.fetch,
                threads=1,  # the old copy serves meanwhile
                low_stall=True,
            )
            with self._lock:
                self._indexes[old.index_id] = loaded
        state = self._collection(tenant, collection)
        made = self._make_plan(tenant, collection, plan.view)
        with state.lock:
            self._follow(tenant, collection, made)
            self._publish(tenant, collection, made)
        retire(fresh)  # the copies the compactions replaced
        return made

    def _follow(self, tenant: str, collection: str, plan: Plan) -> None:
        """Stage the log's entries after what each of the plan's indexes knows (other routers'
        writes), in one read for all of them. Called with the collection's lock held."""
        indexes = plan.live_indexes()
        if not indexes:
            return
        sides = {s.searcher.index_id: s for s in plan.sides() if isinstance(s.searcher, LiveIndex)}
        while True:
            after = min(i.known for i in indexes)
            entries = self.log.read(tenant, collection, after, LOG_PAGE)
            if not len(entries):
                return
            for live in indexes:
                if entries.last_seq > live.known:
                    side = sides[live.index_id]
                    live.stage(
                        NetChanges.of_log(
                            entries,
                            live.known,
                            side.model,
                            side.dimension,
                            side.record.embedding.normalized,
                        )
                    )
            if self._upkeep is not None:
                self._upkeep.wake.set()

    def settle(self, tenant: str, collection: str, timeout: float = 60.0) -> None:
        """Wait until every write this router has staged on the collection's indexes is in the
        indexes themselves (what is left in their overlays then is what only a compaction
        folds in).

        Raises:
            TimeoutError: not done in ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        plan = self.current(tenant, collection)
        for live in plan.live_indexes():
            while live.staged:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{live.staged} changes still staged on {live.index_id}")
                if self._upkeep is not None:
                    self._upkeep.wake.set()
                time.sleep(0.005)

    def stage_write(
        self,
        tenant: str,
        collection: str,
        after: int,
        last: int,
        op: str,
        ids: Ids,
        made_by: dict[str, Vectors],
    ) -> None:
        """Lay this router's own logged write over the indexes it serves (seen by the next
        search), after any other router's entries the log holds before it.

        An index of a version this write reached takes the very vectors written to it; another
        (a version of another model no longer written) reads them from its store.
        """
        if after >= last:
            return
        state = self._collection(tenant, collection)
        with state.lock:
            plan = self.plans.get((tenant, collection))
            if plan is None:
                return  # nothing loaded: an index loaded later reads the write from the log
            behind = [i for i in plan.live_indexes() if i.known < after]
            if behind:
                self._follow(tenant, collection, plan)
            written = plan.live
            logged = None if written is None else made_by.get(written.version)
            for side in plan.sides():
                live = side.searcher
                if not isinstance(live, LiveIndex) or live.known >= last:
                    continue
                vectors = made_by.get(side.version)
                same = written is not None and side.model == written.model
                if vectors is None and logged is not None and written is not None and same:
                    # A version not written to takes the write as the log holds it (as another
                    # router following the log would), when it is of the same model.
                    _, transform = make_transform(written.record.embedding, side.record.embedding)
                    vectors = transform(logged)
                live.stage(NetChanges.of_write(after, last, side.dimension, ids, vectors, op))
        if self._upkeep is not None:
            self._upkeep.wake.set()


# The pause between two shards of an index freed by ``retire``.
RETIRE_PAUSE = 0.05


def retire(indexes: list[LiveIndex]) -> None:
    """Free ``indexes``, which no plan serves any more, one shard at a time, ``RETIRE_PAUSE``
    apart, on a thread of their own. An hnswlib index frees its memory holding the GIL (8-12 ms
    for 150,000 records of 64 dimensions on a 2-core machine), and freeing every shard of a
    collection's old index at once stalled each request of the process that long.
    A shard a request still searches (it took the plan before the swap) is freed when that
    request lets go of it. Empties ``indexes``."""
    shards = [shard for index in indexes for shard in index.shards]
    indexes.clear()  # the indexes themselves go now: their shards are held below
    if not shards:
        return

    def free() -> None:
        while shards:
            shards.pop()
            time.sleep(RETIRE_PAUSE)

    threading.Thread(target=free, name="retire-index", daemon=True).start()
