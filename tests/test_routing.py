"""The router on real stores and indexes: overlay of fresh writes, dual-write, canary, shadow."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from sqlalchemy import event

from tests.conftest import Sandbox
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.journal import Journal
from vecmigrate.control.textdemo import fit_models, load_corpus, seed_texts, text_versions
from vecmigrate.data.backfill import copy_shard, open_source, open_target, prepare
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.errors import DataError, NotFoundError
from vecmigrate.indexes.build import artifact_dir, build_shard, register_index
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.records.sharding import hash_shards
from vecmigrate.serving import heap
from vecmigrate.serving.planner import RETIRE_PAUSE
from vecmigrate.serving.router import Router, WritesPausedError, bucket
from vecmigrate.stores import WHOLE
from vecmigrate.validation.shadow import ShadowLog


def migrated(sandbox: Sandbox) -> MigrationSpec:
    """v1 seeded and indexed, v2 copied (same vectors), dual-write on."""
    sandbox.seed(2000)
    spec = sandbox.spec(shards={"count": 1})
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    copy_shard(spec, shard, Journal(sandbox.catalog))
    sandbox.route("dual", write_versions=["v1", "v2"])
    return spec


def test_a_fresh_write_is_found_at_once_and_a_delete_never_comes_back(sandbox: Sandbox) -> None:
    spec = migrated(sandbox)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    far = np.full((1, sandbox.dim), 50.0, np.float32)  # nowhere near the seeded clusters
    before = router.search("default", "docs", far, 3)
    assert before.index is not None  # served through v1's IVF artifact
    assert 99_999 not in before.ids
    seq = router.upsert("default", "docs", np.array([99_999]), far)
    assert seq == ChangeLog(sandbox.catalog).head("default", "docs")
    after = router.search("default", "docs", far, 3)
    assert after.ids[0, 0] == 99_999  # not in the artifact: found through the change log
    # Dual-write: both versions hold it.
    for store in (open_source(spec), open_target(spec)):
        assert store.fetch(np.array([99_999]))[0].tolist() == [99_999]
    nearest = int(before.ids[0, 0])
    router.delete("default", "docs", np.array([nearest, 99_999]))
    gone = router.search("default", "docs", far, 10)
    assert nearest not in gone.ids
    assert 99_999 not in gone.ids
    assert open_target(spec).count(WHOLE) == open_source(spec).count(WHOLE) == 1999


def test_bad_writes_are_refused_before_anything_is_logged(sandbox: Sandbox) -> None:
    migrated(sandbox)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    log = ChangeLog(sandbox.catalog)
    head = log.head("default", "docs")
    with pytest.raises(DataError, match="dimension 3 but this version holds 16"):
        router.upsert("default", "docs", np.array([1]), np.ones((1, 3), np.float32))
    bad = np.ones((1, sandbox.dim), np.float32)
    bad[0, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        router.upsert("default", "docs", np.array([1]), bad)
    with pytest.raises(DataError, match="dimension 5"):
        router.search("default", "docs", np.ones((1, 5), np.float32), 3)
    with pytest.raises(NotFoundError, match="unknown collection default/nope"):
        router.search("default", "nope", bad, 3)
    assert log.head("default", "docs") == head
    sandbox.route("paused", writes_paused=True)
    with pytest.raises(WritesPausedError):
        router.upsert("default", "docs", np.array([1]), np.ones((1, sandbox.dim), np.float32))


@pytest.mark.integration  # 800 searches with a shadow thread: seconds
def test_canary_split_is_stable_and_shadow_pairs_are_recorded(sandbox: Sandbox) -> None:
    migrated(sandbox)
    sandbox.route("canary", candidate_version="v2", ramp_percent=30.0, shadow_percent=100.0)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    queries = open_source(sandbox.spec()).sample(50, seed=1)[1]
    sides = [
        router.search("default", "docs", queries[j % 50], 5, key=f"user-{j}").version
        for j in range(400)
    ]
    share = sides.count("v2") / len(sides)
    assert 0.22 < share < 0.38
    again = [
        router.search("default", "docs", queries[j % 50], 5, key=f"user-{j}").version
        for j in range(400)
    ]
    assert again == sides  # the same key always lands on the same side
    assert sum(bucket(f"k{j}") < 30 for j in range(10_000)) / 10_000 == pytest.approx(0.3, abs=0.02)
    router.close()
    figures = ShadowLog(sandbox.catalog).figures("default", "docs", "v2", after=0)
    # Reads served by v1 were mirrored to v2 (exact search over the same vectors).
    assert figures.samples > 100
    assert figures.overlap is not None
    assert figures.overlap > 0.5
    assert figures.p99_ms_new is not None


@pytest.mark.integration  # seconds of writes and searches
def test_overlay_follows_many_writes_and_deletes(sandbox: Sandbox) -> None:
    """The overlay's cached arrays and the entries laid over them agree with the store."""
    migrated(sandbox)
    router = Router(sandbox.catalog, refresh_seconds=60.0)  # rely on the laid-over entries
    rng = np.random.default_rng(4)
    alive: dict[int, np.ndarray] = {}
    for step in range(300):
        if alive and rng.random() < 0.3:
            victim = int(rng.choice(list(alive)))
            router.delete("default", "docs", np.array([victim]))
            del alive[victim]
        else:
            record_id = 50_000 + int(rng.integers(0, 400))
            vec = (rng.normal(size=(1, sandbox.dim)) * 0.1 + 40.0 + step % 7).astype(np.float32)
            router.upsert("default", "docs", np.array([record_id]), vec)
            alive[record_id] = vec[0]
        if step % 25 == 0 and alive:
            probe = next(iter(alive))
            found = router.search("default", "docs", alive[probe], 1)
            assert found.ids[0, 0] == probe
    far = np.full((1, sandbox.dim), 43.0, np.float32)
    found = router.search("default", "docs", far, 50).ids[0]
    new = {int(i) for i in found if i >= 50_000}
    assert new <= set(alive)  # nothing deleted comes back


@pytest.mark.parametrize(
    ("kind", "shards"), [("hnswlib_hnsw", 1), ("hnswlib_hnsw", 3), ("faiss_ivf_flat", 3)]
)
def test_the_single_query_path_answers_as_the_index_and_refuses_what_the_general_path_does(
    sandbox: Sandbox, kind: str, shards: int
) -> None:
    """One float32 query against hnswlib or FAISS shards takes the router's shortest path: the
    same neighbours as the index, NaN, infinity and a query of the wrong length refused, k
    past ef or past the count answered (padded), and the router's own write seen at once."""
    index_spec: dict[str, object] = {
        "kind": "hnswlib_hnsw",
        "m": 16,
        "ef_search": 32,
        "ef_construction": 64,
    }
    if kind == "faiss_ivf_flat":  # every list probed: the whole collection within reach
        index_spec = {"kind": "faiss_ivf_flat", "nlist": 8, "nprobe": 8}
    vectors = clustered(300, sandbox.dim, clusters=8, seed=3)
    ids = sequential_ids(300)
    seed_collection(
        sandbox.catalog,
        "default",
        "docs",
        sandbox.version("v1", index_spec),
        ids,
        vectors,
        shards=shards,
    )
    router = Router(sandbox.catalog, refresh_seconds=60.0)  # the plan stays fresh throughout
    view = sandbox.catalog.get_routing("default", "docs")
    assert view is not None
    assert view.read_index is not None
    index = router.searcher(view.read_index)
    q = vectors[7] + np.float32(0.01)
    first = router.search("default", "docs", q, 5)
    again = router.search("default", "docs", q, 5)
    plan = router._plans[("default", "docs")]
    assert plan.one is not None  # the shortest path is the one taken
    for got in (first, again):
        assert got.ids.dtype == np.int64
        assert np.array_equal(got.ids, index.search(q[None, :], 5)[1])
        assert got.ids[0, 0] == ids[7]
    for bad in (np.nan, np.inf, -np.inf):
        query = q.copy()
        query[3] = bad
        with pytest.raises(DataError, match="NaN or infinity"):
            router.search("default", "docs", query, 5)
        with pytest.raises(DataError, match="NaN or infinity"):
            router.search("default", "docs", query.astype(np.float64), 5)
        with pytest.raises(DataError, match="NaN or infinity"):
            router.search("default", "docs", np.stack([q, query]), 5)
    # hnswlib answers a 1-D query of the wrong length without a word (reading past a short
    # one): the router's own check of the shape is all that stands between it and an answer.
    for length in (sandbox.dim - 1, sandbox.dim + 1):
        with pytest.raises(DataError, match="dimension"):
            router.search("default", "docs", np.resize(q, length), 5)
    wide = router.search("default", "docs", q, 100)  # k above ef_search (32)
    assert np.array_equal(np.sort(wide.ids[0, :5]), np.sort(first.ids[0]))
    assert len(set(wide.ids[0].tolist())) == 100
    past = router.search("default", "docs", q, 310)  # k above the count: padded
    assert sorted(past.ids[0, :300].tolist()) == sorted(ids.tolist())
    assert past.ids[0, 300:].tolist() == [-1] * 10
    assert np.isinf(past.distances[0, 300:]).all()
    far = np.full(sandbox.dim, 50.0, np.float32)
    router.upsert("default", "docs", np.array([99_999]), far[None, :])
    assert router.search("default", "docs", far, 3).ids[0, 0] == 99_999


@contextmanager
def catalog_statements(sandbox: Sandbox) -> Iterator[list[str]]:
    """SQL statements run on the catalog's engine by this thread while the block runs."""
    seen: list[str] = []
    me = threading.get_ident()

    def note(conn: object, cursor: object, statement: str, *args: object) -> None:
        if threading.get_ident() == me:
            seen.append(statement)

    engine = sandbox.catalog.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


@pytest.mark.parametrize("kind", ["hnswlib_hnsw", "faiss_hnsw"])
def test_a_search_after_the_plan_is_built_asks_the_catalog_nothing(
    sandbox: Sandbox, kind: str
) -> None:
    """Routing, versions, models, stores and indexes are resolved once per routing generation:
    searches then ask the catalog nothing, with writes laid over the index (FAISS HNSW keeps
    them in its overlay) or applied to it, and with a canary and shadow reads."""
    index = {"kind": kind, "m": 16, "ef_search": 64}
    vectors = clustered(1500, sandbox.dim, clusters=8, seed=3)
    sandbox.seed(vectors=vectors, index=index, shards=2)
    queries = vectors[:40] + np.float32(0.01)
    plain = Router(sandbox.catalog, refresh_seconds=600.0)  # no refresh during the test
    plain.search("default", "docs", queries[0], 5)  # builds the plan
    with catalog_statements(sandbox) as seen:
        for q in queries:
            plain.search("default", "docs", q, 5)
            plain.search("default", "docs", q[None, :], 5, key="user-1")
    assert seen == []
    plain.close()
    view = sandbox.catalog.get_routing("default", "docs")
    assert view is not None
    sandbox.route(
        "canary",
        candidate_version="v1",
        candidate_index=view.read_index,
        ramp_percent=30.0,
        shadow_percent=50.0,
    )
    router = Router(sandbox.catalog, refresh_seconds=600.0)
    router.search("default", "docs", queries[0], 5)
    with catalog_statements(sandbox) as seen:
        for n, q in enumerate(queries):
            router.search("default", "docs", q, 5, key=f"user-{n}")
    assert seen == []
    far = np.full((1, sandbox.dim), 50.0, np.float32)
    router.upsert("default", "docs", np.array([99_999]), far)  # logs the write: the catalog
    router.delete("default", "docs", np.array([0, 1]))
    live = router.searcher(router.routing("default", "docs").read_index or "")
    assert isinstance(live, LiveIndex)
    with catalog_statements(sandbox) as seen:
        assert router.search("default", "docs", far[0], 3).ids[0, 0] == 99_999
        router.settle("default", "docs")
        for q in queries:
            found = router.search("default", "docs", q, 5).ids
            assert not {0, 1} & set(found[0].tolist())
    assert seen == []
    if kind == "faiss_hnsw":
        assert live.kept == 3  # the overlay keeps them until a compaction
    else:
        assert live.laid_over == 0  # applied to the index itself
    router.close()


def test_writes_reach_the_served_index_itself_and_every_router_agrees(sandbox: Sandbox) -> None:
    """A write through one router is applied to the index that router serves (the index object
    finds it, not the overlay); another router serving the same artifact reads it from the log
    and holds the same records."""
    hnsw = {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
    vectors = clustered(1000, sandbox.dim, clusters=8, seed=3)
    sandbox.seed(vectors=vectors, index=hnsw, shards=1)
    one = Router(sandbox.catalog, refresh_seconds=0.1)
    other = Router(sandbox.catalog, refresh_seconds=0.1)
    for router in (one, other):
        router.search("default", "docs", vectors[0], 3)
    far = np.full((1, sandbox.dim), 50.0, np.float32)
    one.upsert("default", "docs", np.array([99_999]), far)
    one.delete("default", "docs", np.array([5]))
    view = sandbox.catalog.get_routing("default", "docs")
    assert view is not None
    assert view.read_index is not None
    for router in (one, other):
        live = router.searcher(view.read_index)
        assert isinstance(live, LiveIndex)
        deadline = time.monotonic() + 10
        while live.applied < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # the other router reads the log every 0.1 s
        router.settle("default", "docs")
        assert live.laid_over == 0
        native = live.shards[0].native
        assert native.knn_query(far, 1)[0][0, 0] == 99_999  # the index itself
        with pytest.raises(RuntimeError, match="Label not found"):
            native.get_items([5])  # deleted in the index itself
        assert router.search("default", "docs", far[0], 1).ids[0, 0] == 99_999
    queries = vectors[:50] + np.float32(0.01)
    assert np.array_equal(
        one.search("default", "docs", queries, 5).ids,
        other.search("default", "docs", queries, 5).ids,
    )
    one.close()
    other.close()


def test_a_text_search_after_its_model_is_resolved_asks_the_catalog_nothing(
    sandbox: Sandbox,
) -> None:
    """The model (or adapter) that embeds a version's queries is resolved once per refresh:
    text searches and text writes then ask the registry nothing per request."""
    corpus = load_corpus(600)
    old, new = fit_models(sandbox.catalog, corpus, sandbox.root / "models")
    v1, _ = text_versions(sandbox.store, old, new)
    seed_texts(sandbox.catalog, "default", "docs", v1, corpus)
    router = Router(sandbox.catalog, refresh_seconds=600.0)
    first = router.search_text("default", "docs", [corpus.texts[10][:60]], 5)
    assert first.via == f"model {v1.embedding.model_id}@1"
    with catalog_statements(sandbox) as seen:
        for text in corpus.texts[:30]:
            found = router.search_text("default", "docs", [text[:60]], 5)
            assert found.via == first.via
    assert seen == []
    with catalog_statements(sandbox) as seen:
        router.upsert("default", "docs", np.array([900_001]), texts=["Return the sum."])
    # The write itself: the log append and the documents, nothing of the registry.
    assert seen
    assert not [s for s in seen if "models" in s or "adapters" in s]
    router.close()


def test_a_rollback_after_cut_over_reads_at_once_from_the_index_kept_current(
    sandbox: Sandbox,
) -> None:
    """While a version is still written after a cut-over, the router keeps the index it served
    it from and applies the writes to it: a rollback reads from that very index, current."""
    spec = migrated(sandbox)  # v1 read, v1 and v2 written
    target = open_target(spec)
    directory = artifact_dir(spec.target.store, "default", "docs", "v2")
    refs = [build_shard(target, spec.target, s, directory, threads=1) for s in hash_shards(1)]
    new_index = register_index(sandbox.catalog, "default", "docs", spec.target, refs, None)
    ChangeLog(sandbox.catalog).set_index_position(
        new_index.id, ChangeLog(sandbox.catalog).head("default", "docs")
    )
    _, seventh = open_source(spec).fetch(np.array([7]))
    router = Router(sandbox.catalog, refresh_seconds=0.05)
    view = router.routing("default", "docs")
    assert view.read_index is not None
    old = router.searcher(view.read_index)
    assert isinstance(old, LiveIndex)
    assert 7 in {int(i) for s in old.shards for i in s.search(seventh, 10)[1][0]}
    sandbox.route(
        "cutover", read_version="v2", read_index=new_index.id, write_versions=["v2", "v1"]
    )

    def reading(version: str) -> None:
        deadline = time.monotonic() + 10
        while router.routing("default", "docs").read_version != version:
            assert time.monotonic() < deadline
            time.sleep(0.02)

    reading("v2")
    far = np.full((1, sandbox.dim), 50.0, np.float32)
    router.upsert("default", "docs", np.array([99_999]), far)
    router.delete("default", "docs", np.array([7]))
    router.settle("default", "docs")
    assert router.searcher(view.read_index) is old  # on standby, kept current
    assert old.laid_over == 0
    assert 99_999 in {int(i) for s in old.shards for i in s.search(far, 1)[1][0]}
    sandbox.route(
        "rollback",
        read_version="v1",
        read_index=view.read_index,
        write_versions=["v1", "v2"],
    )
    reading("v1")
    found = router.search("default", "docs", far[0], 3)
    assert (found.version, found.index) == ("v1", view.read_index)
    assert found.ids[0, 0] == 99_999
    assert router.searcher(view.read_index) is old  # the same index, not loaded again
    assert 7 not in {int(i) for s in old.shards for i in s.search(seventh, 10)[1][0]}
    router.close()


def test_a_router_that_settles_its_heap_freezes_each_new_plan_and_frees_a_retired_index(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vecmigrate serve` freezes what each new plan loaded out of the garbage collector's
    full passes (``heap.settle``); a refresh that keeps the plan does not settle again, and
    an index no plan serves any more is still freed, the index and every shard, by reference
    counting alone (with the collector off): nothing of it is left in a cycle to leak."""
    sandbox.seed(2000, index={"kind": "hnswlib_hnsw", "m": 8, "ef_construction": 40}, shards=2)
    settled: list[int] = []
    real = heap.settle

    def settle() -> None:
        settled.append(1)
        real()

    monkeypatch.setattr(heap, "settle", settle)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    router.planner.settle_heap = True
    query = np.full((1, sandbox.dim), 0.1, np.float32)
    gc.disable()
    try:
        served = router.search("default", "docs", query, 3)
        assert served.index is not None
        assert len(settled) == 1
        assert gc.get_freeze_count() > 0
        router.search("default", "docs", query, 3)
        assert len(settled) == 1  # the same plan: nothing new to freeze
        live = router.planner.searcher(served.index)
        assert isinstance(live, LiveIndex)
        watches = [weakref.finalize(x, lambda: None) for x in (live, *live.shards)]
        del live, served
        sandbox.route("exact", read_index=None)
        assert router.search("default", "docs", query, 3).index is None  # a new plan
        assert len(settled) == 2
        deadline = time.monotonic() + 10
        while any(w.alive for w in watches):
            assert time.monotonic() < deadline, [w.alive for w in watches]
            time.sleep(0.01)
    finally:
        router.close()
        gc.enable()
        gc.unfreeze()


def test_an_index_no_plan_serves_is_freed_one_shard_at_a_time_off_the_request(
    sandbox: Sandbox,
) -> None:
    """Once the routing stops reading an index, the router frees it a shard at a time on a
    thread of its own, RETIRE_PAUSE apart: an hnswlib index frees its memory holding the GIL,
    and all of a collection's shards at once stalled every request of the process."""
    sandbox.seed(2000, index={"kind": "hnswlib_hnsw", "m": 8, "ef_construction": 40}, shards=3)
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    query = np.full((1, sandbox.dim), 0.1, np.float32)
    try:
        served = router.search("default", "docs", query, 3)
        assert served.index is not None
        live = router.planner.searcher(served.index)
        assert isinstance(live, LiveIndex)
        freed: list[float] = []
        assert len(live.shards) == 3
        watches = [weakref.finalize(s, lambda: freed.append(time.monotonic())) for s in live.shards]
        del live, served
        sandbox.route("exact", read_index=None)
        assert router.search("default", "docs", query, 3).index is None  # a new plan
        assert len(freed) < 3  # not all at once, on the thread that swapped the plan
        deadline = time.monotonic() + 10
        while len(freed) < 3:
            assert time.monotonic() < deadline, freed
            time.sleep(0.01)
    finally:
        router.close()
    assert not any(w.alive for w in watches)
    gaps = np.diff(freed)
    assert (gaps >= 0.8 * RETIRE_PAUSE).all(), gaps
