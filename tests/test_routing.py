"""The router on real stores and indexes: overlay of fresh writes, dual-write, canary, shadow."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import Sandbox
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.journal import Journal
from vecmigrate.data.backfill import copy_shard, open_source, open_target, prepare
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.errors import DataError, NotFoundError
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.serving.router import Router, WritesPausedError, bucket
from vecmigrate.stores import WHOLE
from vecmigrate.validation.shadow import ShadowLog


def route(sandbox: Sandbox, key: str, **fields: object) -> RoutingView:
    current = sandbox.catalog.get_routing("default", "docs")
    assert current is not None
    base = current.model_dump()
    base.update(fields)
    return sandbox.catalog.compare_and_set_routing(
        "default",
        "docs",
        current.generation,
        base["read_version"],
        base["read_index"],
        base["write_versions"],
        "test",
        "test",
        key,
        candidate_version=base["candidate_version"],
        candidate_index=base["candidate_index"],
        ramp_percent=base["ramp_percent"],
        shadow_percent=base["shadow_percent"],
        writes_paused=base["writes_paused"],
    )


def migrated(sandbox: Sandbox) -> MigrationSpec:
    """v1 seeded and indexed, v2 copied (same vectors), dual-write on."""
    sandbox.seed(2000)
    spec = sandbox.spec(shards={"count": 1})
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    copy_shard(spec, shard, Journal(sandbox.catalog))
    route(sandbox, "dual", write_versions=["v1", "v2"])
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
    route(sandbox, "paused", writes_paused=True)
    with pytest.raises(WritesPausedError):
        router.upsert("default", "docs", np.array([1]), np.ones((1, sandbox.dim), np.float32))


@pytest.mark.integration  # 800 searches with a shadow thread: seconds
def test_canary_split_is_stable_and_shadow_pairs_are_recorded(sandbox: Sandbox) -> None:
    migrated(sandbox)
    route(sandbox, "canary", candidate_version="v2", ramp_percent=30.0, shadow_percent=100.0)
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


def test_the_single_query_path_answers_as_the_index_and_refuses_what_the_general_path_does(
    sandbox: Sandbox,
) -> None:
    """One float32 query against a one-shard hnswlib index takes the router's shortest path:
    the same neighbours as the index, NaN, infinity and a query of the wrong length refused,
    k past ef or past the count
    answered (padded), and the router's own write seen at once."""
    hnsw = {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 32, "ef_construction": 64}
    vectors = clustered(300, sandbox.dim, clusters=8, seed=3)
    ids = sequential_ids(300)
    seed_collection(
        sandbox.catalog,
        "default",
        "docs",
        sandbox.version("v1", hnsw),
        ids,
        vectors,
        shards=1,
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
