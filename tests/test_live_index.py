"""Writes reaching the served index itself: applied in place where the index can take them,
laid over it where it cannot, in log order, with searches running beside the writer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from tests.index_kinds import every_artifact_kind, write_built
from vecmigrate.catalog.changelog import DELETE, UPSERT, Changes
from vecmigrate.data.datasets import clustered
from vecmigrate.indexes.artifacts import LoadedIndex
from vecmigrate.indexes.live import LiveIndex, NetChanges
from vecmigrate.model.spec import FaissFlat, FaissHnsw, FaissIvfFlat, HnswlibHnsw, IndexSpec, Metric
from vecmigrate.records.vectors import ExactKnn

N, DIM = 3000, 16
SPECS = every_artifact_kind(nlist=16, nprobe=16, pq_m=4, pq_nbits=6, ef_construction=100)
SPACE = "test-model@1"


def artifacts(directory: Path, spec: IndexSpec, shards: int, metric: Metric = Metric.L2) -> list:
    """``shards`` artifacts over N clustered vectors, ids split by parity (not by hash)."""
    ids = np.arange(N, dtype=np.int64)
    x = clustered(N, DIM, clusters=12, seed=5)
    out = []
    for s in range(shards):
        mine = ids % shards == s
        art = write_built(
            spec, metric, ids[mine], x[mine], directory, f"shard-{s:04d}", f"{s}" * 64, threads=1
        )
        out.append(art)
    return out


def live(directory: Path, spec: IndexSpec, shards: int = 2, position: int = 0) -> LiveIndex:
    loaded = [LoadedIndex(a.manifest) for a in artifacts(directory, spec, shards)]
    return LiveIndex(
        "ix",
        loaded,
        position,
        space=SPACE,
        normalized=False,
        metric=Metric.L2,
        dimension=DIM,
    )


def index_ids(index: LiveIndex, query: np.ndarray, k: int) -> set[int]:
    """What the index objects themselves answer, over every shard: no overlay."""
    found: set[int] = set()
    for shard in index.shards:
        _, ids = shard.search(query[None, :], k)
        found |= {int(i) for i in ids[0] if i >= 0}
    return found


def held(index: LiveIndex) -> set[int]:
    """Every id the FAISS index objects hold (an IVF's lists, a flat index's id map)."""
    found: set[int] = set()
    for shard in index.shards:
        native = shard.native
        if isinstance(native, faiss.IndexIVF):
            lists = native.invlists
            for n in range(native.nlist):
                size = lists.list_size(n)
                found |= set(faiss.rev_swig_ptr(lists.get_ids(n), size).tolist())
        else:
            found |= set(faiss.vector_to_array(native.id_map).tolist())
    return found


def write(after: int, ids: list[int], vectors: np.ndarray | None, op: str = UPSERT) -> NetChanges:
    return NetChanges.of_write(after, after + len(ids), DIM, np.array(ids), vectors, op)


def drain(index: LiveIndex) -> None:
    while index.drain(7):  # small turns: the queue is split across them
        pass


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_a_write_reaches_the_index_itself_and_a_delete_leaves_it(
    tmp_path: Path, spec: IndexSpec
) -> None:
    index = live(tmp_path, spec)
    far = np.full(DIM, 40.0, np.float32)
    nearest = int(index.search(far[None, :], 1)[1][0, 0])
    index.stage(write(0, [90_001, 90_002], np.stack([far, far + 0.5])))
    # Staged: searches see it at once (laid over the index).
    assert index.search(far[None, :], 1)[1][0, 0] == 90_001
    drain(index)
    assert index.applied == index.known == 2
    if index.updatable:
        # Applied: the index objects find it themselves, and nothing is laid over them.
        assert {90_001, 90_002} <= index_ids(index, far, 3)
        assert index.laid_over == 0
    else:
        # FAISS HNSW cannot remove: the overlay keeps the writes until a compaction.
        assert index.kept == 2
        assert index.laid_over == 2
    index.stage(write(2, [90_001, nearest], None, DELETE))
    drain(index)
    answer = {int(i) for i in index.search(far[None, :], 10)[1][0]}
    assert 90_001 not in answer
    assert nearest not in answer
    assert 90_002 in answer
    if index.updatable:
        assert 90_001 not in index_ids(index, far, 10)
        assert nearest not in index_ids(index, far, 10)
        # A record written again after its delete comes back, in the index itself.
        index.stage(write(4, [90_001], far[None, :] + 0.1))
        drain(index)
        assert 90_001 in index_ids(index, far, 3)
        assert index.search(far[None, :], 1)[1][0, 0] == 90_001


def test_hnswlib_reuses_the_slots_deletes_free_and_keeps_one_slot_per_record(
    tmp_path: Path,
) -> None:
    index = live(tmp_path, HnswlibHnsw(m=16, ef_search=64), shards=1)
    shard = index.shards[0]
    hnsw = shard.native
    capacity = hnsw.get_max_elements()
    rng = np.random.default_rng(3)
    seq = 0
    # Delete 500 records, write 500 new ones: the new ones take the freed slots.
    index.stage(write(seq, list(range(500)), None, DELETE))
    seq += 500
    new = list(range(100_000, 100_500))
    vectors = rng.normal(size=(500, DIM)).astype(np.float32) * 3
    index.stage(write(seq, new, vectors))
    seq += 500
    drain(index)
    assert hnsw.get_max_elements() == capacity
    assert hnsw.get_current_count() == N
    assert shard.count == N
    # Records written over and over, deleted and written again, keep one slot each: their
    # labels stay reachable (a second slot would lose the label's mapping when reused).
    for _ in range(5):
        churn = rng.choice(new, 100, replace=False).tolist()
        index.stage(write(seq, churn, None, DELETE))
        seq += 100
        index.stage(write(seq, churn, rng.normal(size=(100, DIM)).astype(np.float32) * 3))
        seq += 100
        drain(index)
    labels = hnsw.get_ids_list()
    assert len(labels) == len(set(labels)) == N
    found = hnsw.get_items(new)
    assert len(found) == 500
    assert hnsw.get_current_count() == N


def test_a_turn_fits_its_time_at_the_pace_of_each_kind_of_record(tmp_path: Path) -> None:
    """hnswlib updates a record it holds several times slower than it adds one, and deletes
    one almost for free: a turn takes as many of each as its pace says fit in its time, so
    the searches it keeps out wait about as long whatever it applies."""
    index = live(tmp_path, HnswlibHnsw(m=16, ef_search=64), shards=2)
    rng = np.random.default_rng(5)
    seq = 0
    index.pace = {"add": 1e-3, "update": 6e-3, "delete": 1e-5}  # fixed, then learned

    def turn(ids: list[int], op: str = UPSERT) -> int:
        """Stage writes (or deletes) of ``ids``, apply one turn of 60 ms: how many it
        applied."""
        nonlocal seq
        x = rng.normal(size=(len(ids), DIM)).astype(np.float32) if op == UPSERT else None
        index.stage(write(seq, ids, x, op))
        seq += len(ids)
        before = index.staged
        pace = dict(index.pace)
        index.drain(4096, seconds=0.0605)
        applied = before - index.staged
        drain(index)
        index.pace = pace
        return applied

    assert turn(list(range(100_000, 100_100))) == 60  # new records: 1 ms each
    assert turn(list(range(100))) == 10  # held ones: 6 ms each
    # Mixed, in the run's order: 5 held (30 ms), then new ones up to 60 ms (30).
    assert turn(list(range(200, 205)) + list(range(200_000, 200_100))) == 35
    assert turn(list(range(1000, 8000)), DELETE) == 4096  # deletes: up to the cap
    assert turn(list(range(300, 302))) == 2  # what is staged, however much time is left
    assert index.staged == 0
    # A turn times what it applied, one kind apart from another.
    index.pace = {"add": 1.0, "update": 1.0, "delete": 1.0}
    index.stage(write(seq, list(range(400, 450)), rng.normal(size=(50, DIM)).astype(np.float32)))
    index.drain(4096, seconds=1e9)
    assert index.pace["update"] < 1.0
    assert index.pace["add"] == index.pace["delete"] == 1.0  # none of those: unchanged


@pytest.mark.parametrize("low_stall", [False, True])
def test_an_index_loaded_for_writes_takes_new_records_without_copying_its_graph(
    tmp_path: Path, low_stall: bool
) -> None:
    """A router loads the indexes it serves with room for a quarter more records: its first
    new records do not resize (copy) the graph while searches wait."""
    (art,) = artifacts(tmp_path, HnswlibHnsw(m=16, ef_search=64), 1)
    shard = LoadedIndex(art.manifest, for_writes=True, low_stall=low_stall)
    room = shard.native.get_max_elements()
    assert room >= N * 5 // 4
    assert LoadedIndex(art.manifest, low_stall=low_stall).native.get_max_elements() == N
    new = np.arange(10**6, 10**6 + room - N, dtype=np.int64)
    shard.add(new, np.random.default_rng(2).normal(size=(len(new), DIM)).astype(np.float32))
    assert shard.native.get_max_elements() == room
    assert shard.count == shard.native.get_current_count() == room


def test_an_index_that_cannot_take_writes_folds_a_whole_budget_a_turn(tmp_path: Path) -> None:
    """FAISS HNSW keeps writes in its overlay: a turn only folds them (cheap), so it is not
    sized by the pace of writes it never makes."""
    index = live(tmp_path, FaissHnsw(m=16, ef_search=64))
    assert not index.updatable
    ids = list(range(10**6, 10**6 + 3000))
    index.stage(write(0, ids, np.random.default_rng(1).normal(size=(3000, DIM)).astype(np.float32)))
    assert index.drain(2000, seconds=0.004)
    assert index.staged == 1000
    assert not index.drain(2000, seconds=0.004)


def random_writes(
    index: LiveIndex,
    rng: np.random.Generator,
    alive: dict[int, np.ndarray],
    candidates: np.ndarray,
    *,
    rounds: int,
    most: int,
    deletes: float,
    vectors: Callable[[int], np.ndarray],
    seq: int = 0,
) -> None:
    """Random runs of upserts (``vectors(n)`` new vectors) and deletes (a ``deletes`` share of
    the runs) of ``candidates``, staged in log order from ``seq`` and applied in random turns,
    then to the end; ``alive`` follows what was written."""
    for _ in range(rounds):
        n = int(rng.integers(1, most))
        chosen = rng.choice(candidates, n, replace=False).tolist()
        if rng.random() < deletes:
            index.stage(write(seq, chosen, None, DELETE))
            for i in chosen:
                alive.pop(i, None)
        else:
            written = vectors(n).astype(np.float32)
            index.stage(write(seq, chosen, written))
            alive.update(zip(chosen, written, strict=True))
        seq += n
        if rng.random() < 0.5:
            index.drain(int(rng.integers(1, 100)))
    drain(index)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_random_writes_leave_the_index_holding_exactly_the_written_records(
    tmp_path: Path, spec: IndexSpec
) -> None:
    """Upserts, overwrites and deletes in random runs, applied in random turns: every record
    alive is found as its own nearest neighbour, and no deleted one is found at all."""
    index = live(tmp_path, spec)
    rng = np.random.default_rng(11)
    alive = {i: v for i, v in zip(range(N), clustered(N, DIM, clusters=12, seed=5), strict=True)}
    random_writes(
        index,
        rng,
        alive,
        np.arange(N + 400),
        rounds=30,
        most=80,
        deletes=0.3,
        vectors=lambda n: rng.normal(size=(n, DIM)) * 4 + rng.integers(-30, 30),
    )
    ids = np.array(sorted(alive), np.int64)
    vectors = np.stack([alive[i] for i in ids])
    probe = rng.choice(len(ids), 200, replace=False)
    _, got = index.search(vectors[probe], 5)
    exact = ExactKnn(vectors[probe], 5, Metric.L2)
    exact.add(ids, vectors)
    truth = exact.result()[1]
    assert set(got.ravel().tolist()) - {-1} <= set(alive)
    if spec.kind.startswith("faiss_") and index.updatable:
        assert held(index) == set(alive)  # exactly, as the index objects hold them
    if spec.kind != "faiss_ivf_pq":  # PQ codes are lossy: membership is the check there
        hits = np.mean([truth[r, 0] in got[r] for r in range(len(probe))])
        assert hits >= 0.99


def test_processes_applying_the_log_in_different_turns_hold_the_same_records(
    tmp_path: Path,
) -> None:
    """Two copies of one artifact, the same log entries applied in different turns: both hold
    the same records at the end (each process serving an artifact agrees with the others)."""
    spec = FaissFlat()
    a = live(tmp_path / "a", spec)
    b = live(tmp_path / "b", spec)
    rng = np.random.default_rng(5)
    entries = []
    seq = 0
    for _ in range(20):
        n = int(rng.integers(1, 50))
        chosen = rng.choice(N + 500, n, replace=False)
        op = DELETE if rng.random() < 0.3 else UPSERT
        vecs = (rng.normal(size=(n, DIM)) * 3).astype(np.float32)
        for j, record_id in enumerate(chosen.tolist()):
            seq += 1
            entries.append((seq, record_id, op, None if op == DELETE else vecs[j].tobytes()))
    log = Changes(
        seqs=np.array([e[0] for e in entries], np.int64),
        ids=np.array([e[1] for e in entries], np.int64),
        ops=[e[2] for e in entries],
        vectors=[e[3] for e in entries],
        texts=[None] * len(entries),
        spaces=[SPACE] * len(entries),
    )
    a.stage(NetChanges.of_log(log, 0, SPACE, DIM, False))
    drain(a)
    for cut in (40, 200, len(entries)):  # b reads the log in three pages
        b.stage(NetChanges.of_log(log.first(cut), b.known, SPACE, DIM, False))
        b.drain(int(rng.integers(1, 60)))
    drain(b)
    assert a.applied == b.applied == seq

    assert held(a) == held(b)


def test_an_entry_of_another_model_is_read_from_the_store(tmp_path: Path) -> None:
    """During a move to a new model the log holds the serving model's vectors: an index of the
    other model takes the record out and reads its own vector from its store."""
    stored: dict[int, np.ndarray] = {77_777: np.full(DIM, 25.0, np.float32)}

    def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        have = [i for i in ids.tolist() if i in stored]
        vectors = np.stack([stored[i] for i in have]) if have else np.empty((0, DIM), np.float32)
        return np.array(have, np.int64), vectors

    loaded = [LoadedIndex(a.manifest) for a in artifacts(tmp_path, FaissFlat(), 1)]
    index = LiveIndex(
        "ix",
        loaded,
        0,
        space=SPACE,
        normalized=False,
        metric=Metric.L2,
        dimension=DIM,
        fetch=fetch,
    )
    log = Changes(
        seqs=np.array([1, 2], np.int64),
        ids=np.array([77_777, 5], np.int64),
        ops=[UPSERT, UPSERT],
        vectors=[np.zeros(DIM, np.float32).tobytes(), np.zeros(DIM, "<f4").tobytes()],
        texts=[None, None],
        spaces=["other-model@1", "other-model@1"],
    )
    net = NetChanges.of_log(log, 0, SPACE, DIM, False)
    assert sorted(net.foreign.tolist()) == [5, 77_777]
    index.stage(net)
    drain(index)
    assert index.kept == 2  # only a compaction folds them in
    far = np.full((1, DIM), 25.0, np.float32)
    _, got = index.search(far, 3)
    assert got[0, 0] == 77_777  # its vector as the store holds it
    assert 5 not in got[0]
    assert 5 not in index_ids(index, np.zeros(DIM, np.float32), 50)


@pytest.mark.parametrize(
    ("spec", "shards"),
    [(HnswlibHnsw(m=16, ef_search=64), 1), (FaissIvfFlat(nlist=16, nprobe=4), 3)],
    ids=["hnswlib", "faiss-ivf-shards"],
)
def test_searches_run_beside_the_applier_without_a_lock(
    tmp_path: Path, spec: IndexSpec, shards: int
) -> None:
    """Threads search an index while a writer applies thousands of changes to it (a search
    beside an insert can crash hnswlib; FAISS shards searched in one call are joined again
    when the first removal from an IVF replaces its index object): no error, and every answer
    is of records that existed."""
    index = live(tmp_path, spec, shards=shards)
    rng = np.random.default_rng(8)
    queries = clustered(200, DIM, clusters=12, seed=9)
    stop = threading.Event()
    errors: list[BaseException] = []
    answered = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                for q in queries:
                    found = index.search_one(q, 5)
                    if found is None:
                        found = index.search(q[None, :], 5)
                    assert (found[1] >= 0).all()
                    answered[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    seq = 0
    for _ in range(40):
        new = rng.choice(np.arange(N, N * 3), 100, replace=False).tolist()
        index.stage(write(seq, new, rng.normal(size=(100, DIM)).astype(np.float32) * 5))
        seq += 100
        gone = rng.choice(N, 20, replace=False).tolist()
        index.stage(write(seq, gone, None, DELETE))
        seq += 20
        while index.drain(16):
            pass
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert answered[0] > 100
    assert index.applied == seq
    if shards == 1:
        assert index.direct  # caught up: the one-query path is open again
    else:
        assert index._searcher._join[1] is not None  # searched in one call


def test_a_search_for_many_neighbours_leaves_the_graph_search_as_configured(
    tmp_path: Path,
) -> None:
    """hnswlib searches with max(ef, k): a large k (an over-fetch past records laid over) is
    answered without raising ef for every later search."""
    index = live(tmp_path, HnswlibHnsw(m=16, ef_search=32), shards=1)
    hnsw = index.shards[0].native
    q = clustered(1, DIM, clusters=12, seed=5)
    _, wide = index.search(q, 500)
    assert len(set(wide[0].tolist()) - {-1}) == 500
    assert hnsw.ef == 32
    # Laid over the index: the over-fetch widens for a query whose neighbours were written.
    near = index.search(q, 300)[1][0].tolist()
    index.stage(write(0, near, None, DELETE))
    _, after = index.search(q, 10)
    assert not set(after[0].tolist()) & set(near)
    assert hnsw.ef == 32


def _live_labels(shard: LoadedIndex) -> dict[int, np.ndarray]:
    """Every label hnswlib answers for, with its vector (a deleted one it refuses)."""
    hnsw = shard.native
    found = {}
    for label in hnsw.get_ids_list():
        try:
            vector = np.asarray(hnsw.get_items([label]), np.float32)[0]
        except RuntimeError:  # marked deleted
            continue
        found[int(np.uint64(label).astype(np.int64))] = vector
    return found


@pytest.mark.parametrize(
    "loaded", ["fresh", "saved-with-deletes", "saved-for-writes", "saved-for-writes-low-stall"]
)
def test_hnswlib_holds_exactly_the_written_records_through_deletes_and_reused_slots(
    tmp_path: Path, loaded: str
) -> None:
    """Record by record against a model of what was written: deletes, overwrites, records
    written again after their delete, and labels whose slot a new record took and which are
    then written or deleted again. The index keeps its own note of the labels it holds so a
    write does not ask hnswlib id by id; it must never disagree with hnswlib."""
    index = live(tmp_path, HnswlibHnsw(m=16, ef_search=64), shards=1)
    rng = np.random.default_rng(17)
    x = clustered(N, DIM, clusters=12, seed=5)
    alive = {i: x[i] for i in range(N)}
    seq = 0
    if loaded != "fresh":
        # An artifact saved with deleted slots (hnswlib does not list them): reloaded as a
        # gate loads it, every held label's state is asked of hnswlib; as a router loads it
        # (for writes), the note is made from the file's slots and knows the deleted ones.
        gone = list(range(0, 600, 3))
        index.stage(write(seq, gone, None, DELETE))
        seq += len(gone)
        # Negative ids too: hnswlib holds their labels as uint64 above 2**63.
        negative = [-(10**15) * n for n in range(1, 50)]
        vectors = rng.normal(size=(len(negative), DIM)).astype(np.float32) * 5
        index.stage(write(seq, negative, vectors))
        seq += len(negative)
        drain(index)
        for i in gone:
            alive.pop(i)
        alive.update(zip(negative, vectors, strict=True))
        saved = index.shards[0].save(tmp_path / "saved", "shard-0000", "9" * 64)
        shard = LoadedIndex(
            saved.manifest,
            for_writes=loaded != "saved-with-deletes",
            low_stall=loaded.endswith("low-stall"),
        )
        index = LiveIndex(
            "ix", [shard], seq, space=SPACE, normalized=False, metric=Metric.L2, dimension=DIM
        )
        note = shard._labels
        if loaded == "saved-with-deletes":
            assert note.unsure
        else:
            assert not note.unsure
            every = {
                int(np.uint64(label).astype(np.int64)) for label in shard.native.get_ids_list()
            }
            assert note.deleted == every - set(_live_labels(shard))
            assert len(note.deleted) == len(gone) - len(negative)  # the rest took their slots
    # Old ids, ids deleted before, and new ones (some of which reuse freed slots).
    random_writes(
        index,
        rng,
        alive,
        np.concatenate([np.arange(N + 600), -(10**15) * np.arange(1, 80)]),
        rounds=40,
        most=120,
        deletes=0.4,
        vectors=lambda n: rng.normal(size=(n, DIM)) * 5,
        seq=seq,
    )
    shard = index.shards[0]
    held_now = _live_labels(shard)
    assert min(held_now) < 0
    assert set(held_now) == set(alive)
    for i, v in alive.items():
        np.testing.assert_allclose(held_now[i], v, rtol=1e-6)
    assert shard.count == len(alive)
    # Every slot is held once: no label lost its mapping to a reused slot.
    labels = shard.native.get_ids_list()
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize("path", ["search_one", "search_one_shards", "search_one_faiss", "search"])
def test_a_writer_waits_for_the_searches_inside_the_index(tmp_path: Path, path: str) -> None:
    """A search already inside the index when a write comes keeps the writer out until it
    ends (hnswlib and FAISS cannot search beside a write), on the one-query path (one hnswlib
    shard, FAISS shards) and on the general one."""
    if path == "search_one_faiss":
        index = live(tmp_path, FaissIvfFlat(nlist=16, nprobe=4), shards=2)
    else:
        spec = HnswlibHnsw(m=16, ef_search=64)
        index = live(tmp_path, spec, shards=1 if path == "search_one" else 2)
    entered, release = threading.Event(), threading.Event()

    def held_open(real):  # the library's search, held open until released
        def search(*args, **kwargs):
            entered.set()
            assert release.wait(10)
            return real(*args, **kwargs)

        return search

    query = clustered(1, DIM, clusters=12, seed=9)
    if path == "search_one":
        assert index.search_one_ready
        index._knn = held_open(index._knn)
        searcher = threading.Thread(target=index.search_one, args=(query[0], 5))
    elif path == "search_one_shards":
        assert index.search_one_ready
        index._knns = tuple(held_open(each) for each in index._knns)
        searcher = threading.Thread(target=index.search_one, args=(query[0], 5))
    elif path == "search_one_faiss":
        assert index.search_one_ready
        index._searcher.search = held_open(index._searcher.search)  # type: ignore[method-assign]
        searcher = threading.Thread(target=index.search_one, args=(query[0], 5))
    else:
        shard = index.shards[0]
        shard.search = held_open(shard.search)  # type: ignore[method-assign]
        searcher = threading.Thread(target=index.search, args=(query, 5))
    searcher.start()
    assert entered.wait(10)
    index.stage(write(0, [90_001], np.full((1, DIM), 40.0, np.float32)))
    writer = threading.Thread(target=index.drain, args=(8,))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive(), "the writer changed the index under a running search"
    assert index.applied == 0
    release.set()
    searcher.join(10)
    writer.join(10)
    assert not writer.is_alive()
    assert index.applied == 1


@pytest.mark.parametrize(
    "spec",
    [FaissFlat(), FaissIvfFlat(nlist=16, nprobe=4), FaissHnsw(m=8), HnswlibHnsw(m=16)],
    ids=lambda s: s.kind,
)
def test_shards_answer_one_query_directly_while_nothing_is_laid_over(
    tmp_path: Path, spec: IndexSpec
) -> None:
    """Several shards take the one-query path (the router's hot path): the answer ``search``
    gives; FAISS for any k (padded past the records), hnswlib up to its ef; declined while a
    write is laid over the index (until it is applied, where the index can take it) and for a
    query that is not finite."""
    index = live(tmp_path, spec, shards=3)
    assert index.search_one_ready
    assert index.direct
    queries = clustered(20, DIM, clusters=12, seed=9)
    for q in queries:
        for k in (1, 10):
            d, ids = index.search(q[None, :], k)
            found = index.search_one(q, k)
            assert found is not None
            assert found[1].dtype == np.int64
            assert np.array_equal(found[1], ids)
            assert np.allclose(found[0], d)
    d, ids = index.search(queries[:1], N + 5)
    found = index.search_one(queries[0], N + 5)
    if spec.kind == "hnswlib_hnsw":
        assert found is None  # past ef and every shard's count: the general path pads
    else:
        assert found is not None
        assert np.array_equal(found[1], ids)
    assert (ids[0, N:] == -1).all()
    for bad in (np.nan, np.inf):
        q = queries[0].copy()
        q[3] = bad
        assert index.search_one(q, 5) is None
    index.stage(write(0, [90_001], np.full((1, DIM), 40.0, np.float32)))
    assert index.search_one(queries[0], 5) is None  # laid over: the general path answers
    drain(index)
    if spec.kind == "faiss_hnsw":  # its graph keeps every write in the overlay until compaction
        assert index.search_one(queries[0], 5) is None
        return
    assert index.direct
    found = index.search_one(np.full(DIM, 40.0, np.float32), 1)
    assert found is not None
    assert found[1][0, 0] == 90_001
