"""Real FAISS and hnswlib builds, artifacts written atomically and verified by checksum."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.index_kinds import every_artifact_kind, write_built
from vecmigrate.data.datasets import clustered
from vecmigrate.errors import ArtifactError, PreconditionError
from vecmigrate.indexes.artifacts import (
    LoadedIndex,
    ShardedIndex,
    build_index,
    build_key,
    find_artifact,
)
from vecmigrate.indexes.build import READ_BATCH_BYTES, read_batch_rows
from vecmigrate.model.spec import (
    FaissFlat,
    FaissHnsw,
    FaissIvfFlat,
    HnswlibHnsw,
    IndexSpec,
    Metric,
)
from vecmigrate.records.vectors import ExactKnn, merge_topk
from vecmigrate.validation import recall_at_k

N, DIM = 4000, 32
FLOORS = {
    "faiss_flat": 1.0,
    "faiss_ivf_flat": 0.85,
    "faiss_ivf_pq": 0.3,
    "faiss_hnsw": 0.9,
    "hnswlib_hnsw": 0.9,
}
SPECS: list[tuple[IndexSpec, float]] = [
    (spec, FLOORS[spec.kind])
    for spec in every_artifact_kind(nlist=32, nprobe=8, pq_m=8, pq_nbits=8)
]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(100, 100 + N, dtype=np.int64), clustered(N, DIM, clusters=20, seed=1)


@pytest.mark.parametrize(("spec", "floor"), SPECS, ids=lambda s: getattr(s, "kind", ""))
@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP, Metric.COSINE])
def test_build_write_load_search(
    tmp_path: Path,
    data: tuple[np.ndarray, np.ndarray],
    spec: IndexSpec,
    floor: float,
    metric: Metric,
) -> None:
    ids, x = data
    q = x[:100] + 0.01
    exact = ExactKnn(q, 10, metric)
    exact.add(ids, x)
    _, truth = exact.result()
    key = build_key(spec, metric, DIM, "data-checksum")
    art = write_built(spec, metric, ids, x, tmp_path, "shard-0000", key, threads=1)
    assert art.data_file.name.startswith("shard-0000-")
    assert art.sha256[:16] in art.data_file.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    loaded = LoadedIndex(art.manifest, expected_sha256=art.sha256)
    _, found = loaded.search(q, 10)
    assert recall_at_k(found, truth) >= floor


def test_exact_knn_streams_in_batches(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    whole = ExactKnn(x[:20], 5, "l2")
    whole.add(ids, x)
    parts = ExactKnn(x[:20], 5, "l2")
    for chunk in np.array_split(np.arange(N), 9):
        parts.add(ids[chunk], x[chunk])
    assert np.array_equal(whole.result()[1], parts.result()[1])


def test_sharded_search_merges_like_one_index(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ids, x = data
    loaded = []
    for i, part in enumerate(np.array_split(np.arange(N), 3)):
        art = write_built(
            FaissFlat(), Metric.L2, ids[part], x[part], tmp_path, f"shard-{i:04d}", f"k{i}"
        )
        loaded.append(LoadedIndex(art.manifest))
    _, merged = ShardedIndex(loaded).search(x[:30], 7)
    exact = ExactKnn(x[:30], 7, "l2")
    exact.add(ids, x)
    assert np.array_equal(merged, exact.result()[1])


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize(
    "spec", [FaissFlat(), FaissIvfFlat(nlist=8, nprobe=8), FaissHnsw(m=8)], ids=str
)
def test_faiss_shards_search_as_one_call_and_follow_writes(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path, metric: Metric, spec: IndexSpec
) -> None:
    """FAISS shards are searched by one ``faiss.IndexShards``: the same answers as searching
    each shard and merging, for one query and for many, with k beyond a shard's records; and
    a write that replaces a shard's FAISS object (the first removal from an IVF) is searched;
    an empty shard is left out of the call. Shards holding a negative id (hashed from a
    string) are searched one by one: FAISS's merge takes a negative label for the end of an
    answer."""
    ids, x = data
    loaded = []
    for i, part in enumerate(np.array_split(np.arange(N), 4)):
        part = part[:40] if i == 3 else part  # one small shard: k=50 reaches past it
        art = write_built(spec, metric, ids[part], x[part], tmp_path, f"shard-{i:04d}", f"k{i}")
        loaded.append(LoadedIndex(art.manifest))
    if spec.kind != "faiss_ivf_flat":  # an IVF cannot be trained on no records
        none = np.empty(0, np.int64)
        art = write_built(spec, metric, none, x[:0], tmp_path, "shard-0004", "k4")
        loaded.append(LoadedIndex(art.manifest))
    # A short answer is padded with -1 at an infinite distance, and only there.
    d, found = loaded[3].search(x[:3], 50)
    assert (found[:, -10:] == -1).all()
    assert np.array_equal(found == -1, np.isinf(d))
    sharded = ShardedIndex(loaded)
    for q, k in ((x[:1], 10), (x[:25], 10), (x[100:110], 50)):
        d, found = sharded.search(q, k)
        want_d, want = merge_topk([s.search(q, k) for s in loaded], k)
        assert sharded._join[1] is not None
        assert np.array_equal(found, want)
        assert np.allclose(d, want_d)
        assert found.dtype == np.int64
        assert d.dtype == np.float32
    if not loaded[0].updatable:
        return
    before = sharded._join[1]
    gone = int(loaded[0].search(x[:1], 1)[1][0, 0])
    assert loaded[0].remove(np.array([gone])) == 1
    # The query itself, scaled up for inner product (where a longer vector scores higher).
    loaded[1].add(np.array([10**9]), x[:1] * (10 if metric == Metric.IP else 1))
    _, found = sharded.search(x[:1], 5)
    if spec.kind == "faiss_ivf_flat":
        assert sharded._join[1] is not before  # the IVF took its ids: joined anew
    assert gone not in found[0]
    assert 10**9 in found[0]
    # A negative id written: searched one shard at a time from then on, and found.
    loaded[2].add(np.array([-(10**9)]), x[1:2] * (10 if metric == Metric.IP else 1))
    _, found = sharded.search(x[1:2], 5)
    assert sharded._join[1] is None
    assert -(10**9) in found[0]


@pytest.mark.parametrize(
    "spec", [FaissFlat(), FaissIvfFlat(nlist=8, nprobe=8), FaissHnsw(m=8)], ids=str
)
def test_faiss_shards_with_negative_ids_are_searched_one_by_one(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path, spec: IndexSpec
) -> None:
    """Ids hashed from strings are negative half the time; FAISS's merge would end an answer
    at the first one, so those shards are merged in numpy and every answer is whole."""
    ids, x = data
    signed = np.where(ids % 2 == 0, -ids, ids)
    loaded = []
    for i, part in enumerate(np.array_split(np.arange(N), 2)):
        art = write_built(spec, Metric.COSINE, signed[part], x[part], tmp_path, f"s{i}", f"k{i}")
        loaded.append(LoadedIndex(art.manifest))
    sharded = ShardedIndex(loaded)
    _, found = sharded.search(x[:20], 10)
    assert sharded._join[1] is None
    assert (found != -1).all()
    assert np.array_equal(found, merge_topk([s.search(x[:20], 10) for s in loaded], 10)[1])


def test_reuse_only_a_whole_verified_artifact(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, x = data
    spec = HnswlibHnsw(m=8)
    key = build_key(spec, Metric.L2, DIM, "c1")
    assert find_artifact(tmp_path, "shard-0001", key) is None
    art = write_built(spec, Metric.L2, ids, x, tmp_path, "shard-0001", key)
    reused = find_artifact(tmp_path, "shard-0001", key)
    assert reused is not None
    assert reused.reused
    assert reused.sha256 == art.sha256
    # Other data or parameters mean another key: no reuse.
    assert find_artifact(tmp_path, "shard-0001", build_key(spec, Metric.L2, DIM, "c2")) is None
    # A truncated (half-written) file fails its checksum: never reused, never loaded.
    art.data_file.write_bytes(art.data_file.read_bytes()[:1000])
    assert find_artifact(tmp_path, "shard-0001", key) is None
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        LoadedIndex(art.manifest)


def test_ivf_with_too_few_vectors_says_what_to_do(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, x = data
    with pytest.raises(PreconditionError, match=r"lower index\.nlist or use fewer shards"):
        build_index(FaissIvfFlat(nlist=64), Metric.L2, ids[:50], x[:50])


BUILD_MEMORY = """
import sys, tracemalloc
from pathlib import Path
from vecmigrate.config import sqlite_url
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import sequential_ids
from vecmigrate.indexes import build
from vecmigrate.model.spec import BuiltinStoreRef, VersionSpec
from vecmigrate.stores import WHOLE, Scope, open_store

root, metric, batch, n, dim = Path(sys.argv[1]), sys.argv[2], sys.argv[3], 40_000, 64
# The build reads in batches of build.READ_BATCH_BYTES (8 MiB), a sixteenth of a shard of
# 250,000 x 128 (1M vectors in 4 shards): scaled down with this shard (10 MB) to as many batches.
build.READ_BATCH_BYTES = 640 << 10
ref = BuiltinStoreRef(url=sqlite_url(root / "store.db"), artifacts=str(root / "artifacts"))
version = VersionSpec.model_validate({
    "name": "v9", "store": ref.model_dump(),
    "embedding": {"model_id": "m", "dimension": dim, "metric": metric},
    "index": {"kind": "hnswlib_hnsw", "m": 8, "ef_construction": 16},
})
store = open_store(ref, Scope("default", "docs", "v9"), dim)
store.upsert(sequential_ids(n), clustered(n, dim, clusters=8, seed=5))
read_batch = None if batch == "default" else int(batch)
tracemalloc.start()
built = build.build_shard(
    store, version, WHOLE, root / "artifacts", read_batch=read_batch, threads=1
)
_, peak = tracemalloc.get_traced_memory()
assert built.count == n, built.count
print(peak / (n * dim * 4))
"""


def build_peak(tmp_path: Path, metric: str, batch: str) -> float:
    """numpy's and Python's allocations at their highest during a shard's build (traced, in a
    process of its own: tracemalloc counts every thread's allocations, and a suite's leftover
    threads, a router's upkeep, an exporter, would count in the peak), over the shard's vectors'
    bytes. The index's own storage (hnswlib's, FAISS's) is outside them and not counted."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD_MEMORY, str(tmp_path), metric, batch],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_a_shard_build_holds_its_vectors_once(tmp_path: Path, metric: str) -> None:
    """A shard's build reads its records into one pair of arrays (not once in the batches and
    again in their concatenation), in batches of a bounded size (not a fixed count of records,
    each batch's rows held beside the arrays while the next is read ahead), and unit-norms them
    in place for cosine (no normed copy): its allocations stay under 1.3 times the shard's
    vectors. Read in one batch of the whole shard, the same build holds them twice over."""
    peak = build_peak(tmp_path / "bounded", metric, "default")
    assert peak < 1.3, f"peak {peak:.2f}x the shard's vectors"
    if metric == "l2":
        whole = build_peak(tmp_path / "whole", metric, "40000")
        assert whole > 2.0, f"a read in one batch peaked at only {whole:.2f}x"


def test_read_batches_are_sized_by_their_bytes() -> None:
    """A build's read batch holds about READ_BATCH_BYTES of rows whatever the dimension: fewer
    records of wider vectors, 1,024 at least."""
    assert read_batch_rows(128) == READ_BATCH_BYTES // (4 * 128 + 170) == 12_300
    assert read_batch_rows(1536) == 1_328
    assert read_batch_rows(16) == 35_848
    assert read_batch_rows(65_536) == 1_024
