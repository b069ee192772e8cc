"""The built-in store on real SQLite: scans, cursors, idempotent upserts, scope, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from vecmigrate.config import sqlite_url
from vecmigrate.errors import DataError, NotFoundError
from vecmigrate.sharding import hash_shards, plan_shards, range_shards
from vecmigrate.spec import ShardLayout
from vecmigrate.stores import BuiltinStore, Scope
from vecmigrate.stores.base import WHOLE


@pytest.fixture
def url(sql_url: str) -> str:
    return sql_url


def filled(url: str, n: int = 1000, dim: int = 8) -> tuple[BuiltinStore, np.ndarray, np.ndarray]:
    store = BuiltinStore.open(url, Scope("t", "c", "v1"), dim)
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(10, 10 + n * 3, 3)).astype(np.int64)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    store.upsert(ids, vecs)
    return store, ids, vecs


def test_shards_partition_the_data_and_scan_resumes_from_a_cursor(url: str) -> None:
    store, ids, _ = filled(url)
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
            seen.extend(got)
        assert sorted(seen) == sorted(ids.tolist())


def test_range_shards_are_balanced(url: str) -> None:
    store, _, _ = filled(url, 1200)
    counts = [store.count(s) for s in range_shards(4, store.id_quantiles(4))]
    assert counts == [300, 300, 300, 300]


def test_hash_shards_cover_the_hash_space() -> None:
    shards = hash_shards(3)
    assert shards[0].lo == 0
    assert shards[-1].hi == 1 << 32
    assert all(a.hi == b.lo for a, b in itertools.pairwise(shards))


def test_upsert_is_idempotent_and_checksum_is_order_independent(url: str, tmp_path: Path) -> None:
    store, ids, vecs = filled(url)
    before = store.checksum()
    store.upsert(ids[:100], vecs[:100])
    assert store.count() == 1000
    assert store.checksum() == before
    other = BuiltinStore.open(sqlite_url(tmp_path / "other.db"), Scope("t", "c", "v1"), 8)
    order = np.argsort(ids)
    for part in np.array_split(order, 7):
        other.upsert(ids[part], vecs[part])
    assert other.checksum() == before
    vecs2 = vecs.copy()
    vecs2[5, 0] += 1e-3
    other.upsert(ids[5:6], vecs2[5:6])
    assert other.checksum() != before


def test_delete(url: str) -> None:
    store, ids, _ = filled(url)
    assert store.delete(ids[:10]) == 10
    assert store.delete(ids[:10]) == 0
    assert store.count() == 990


def test_bad_input_is_refused_before_anything_is_written(url: str) -> None:
    store, _ids, _vecs = filled(url, 10)
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
        BuiltinStore.open(url, Scope("t", "c", "v1"), 4)


def test_scopes_are_isolated(url: str) -> None:
    a = BuiltinStore.open(url, Scope("tenant-a", "c", "v1"), 4)
    b = BuiltinStore.open(url, Scope("tenant-b", "c", "v1"), 4)
    a.upsert(np.array([1, 2, 3]), np.ones((3, 4), np.float32))
    b.upsert(np.array([1]), np.zeros((1, 4), np.float32))
    assert a.count() == 3
    assert b.count() == 1
    assert b.scan(WHOLE, None, 10).vectors.sum() == 0
    with pytest.raises(NotFoundError):
        BuiltinStore.open(url, Scope("tenant-c", "c", "v1"))


def test_exact_search_and_sample(url: str) -> None:
    store, ids, vecs = filled(url, 500)
    d, found = store.search(vecs[:5], 3, batch_size=64)
    assert found[:, 0].tolist() == ids[:5].tolist()
    assert np.allclose(d[:, 0], 0.0, atol=1e-5)
    sid, svec = store.sample(50, seed=3)
    assert len(set(sid.tolist())) == 50
    assert store.sample(50, seed=3)[0].tolist() == sid.tolist()
    lookup = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    assert np.array_equal(svec[0], vecs[lookup[int(sid[0])]])
