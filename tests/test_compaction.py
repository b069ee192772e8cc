"""Compaction: the change log folded into new artifacts, resumed from its checkpoint after its
worker is killed, and routers moving to the compacted artifacts."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from functools import partial

import numpy as np
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox, WorkerProcess
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.control.compaction import start_compaction
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.embedding.registry import model_key
from vecmigrate.indexes.compaction import Checkpoint, compact, with_overlay
from vecmigrate.indexes.live import LiveIndex, open_live
from vecmigrate.model.compaction import CompactionProgress, CompactionRequest
from vecmigrate.serving.router import Router

N = 2000


def seeded(sandbox: Sandbox, kind: str, shards: int = 2) -> tuple[np.ndarray, str]:
    """A collection of N records in an index of ``kind``; the index id."""
    params = {"kind": kind} | ({"nlist": 16, "nprobe": 16} if "ivf" in kind else {"m": 16})
    vectors = clustered(N, sandbox.dim, clusters=8, seed=3)
    result = seed_collection(
        sandbox.catalog,
        "default",
        "docs",
        sandbox.version("v1", params),
        sequential_ids(N),
        vectors,
        shards=shards,
    )
    return vectors, result.index_id


def write_traffic(
    router: Router, dim: int, rounds: int, seed: int = 1
) -> tuple[set[int], set[int]]:
    """Upserts of new and old records and deletes, through the router; (written, deleted)."""
    rng = np.random.default_rng(seed)
    written: set[int] = set()
    deleted: set[int] = set()
    for r in range(rounds):
        new = np.arange(100_000 + r * 150, 100_000 + (r + 1) * 150)
        vectors = (rng.normal(size=(150, dim)) * 2 + 30).astype(np.float32)
        router.upsert("default", "docs", new, vectors)
        written |= set(new.tolist())
        gone = rng.choice(N, 50, replace=False)
        router.delete("default", "docs", gone)
        deleted |= set(gone.tolist())
    return written - deleted, deleted


def holds(live: LiveIndex, ids: set[int], gone: set[int], dim: int) -> None:
    """The index objects themselves hold ``ids`` (each its own nearest neighbour through the
    index, nothing laid over it) and none of ``gone``."""
    assert live.laid_over == 0
    assert live.kept == 0
    probe = np.array(sorted(ids)[:100])
    stores = live.fetch
    assert stores is not None
    _, vectors = stores(probe)
    _, found = live.search(vectors, 3)
    assert np.mean(found[:, 0] == probe) > 0.97
    everything: set[int] = set()
    for shard in live.shards:
        _, near = shard.search(vectors, 10)
        everything |= set(near.ravel().tolist())
    assert not everything & gone


@pytest.mark.parametrize("kind", ["hnswlib_hnsw", "faiss_ivf_flat", "faiss_hnsw"])
def test_compaction_folds_the_log_into_new_artifacts(sandbox: Sandbox, kind: str) -> None:
    _, index_id = seeded(sandbox, kind)
    router = Router(sandbox.catalog, refresh_seconds=0.1)
    router.search("default", "docs", np.zeros(sandbox.dim, np.float32), 3)
    written, deleted = write_traffic(router, sandbox.dim, 6)
    log = ChangeLog(sandbox.catalog)
    head = log.head("default", "docs")
    served = router.searcher(index_id)
    assert isinstance(served, LiveIndex)
    if kind == "faiss_hnsw":
        assert served.kept > 0  # FAISS HNSW keeps writes laid over it until a compaction
    version = sandbox.catalog.find_version("default", "docs", "v1")
    assert version is not None
    store = served.fetch
    # The same call twice: the second must find nothing left to do.
    compact_to_head = partial(
        compact,
        sandbox.catalog,
        index_id,
        head,
        space=model_key(version.embedding),
        normalized=False,
        fetch=store,
    )
    outcome = compact_to_head()
    assert (outcome.started_at, outcome.position) == (0, head)
    assert outcome.applied == log.count_after("default", "docs", 0)
    assert log.compacted(index_id) == (head, outcome.artifacts)
    # The index version's own artifacts are untouched; the compacted ones are new files.
    registered = {a["sha256"] for a in sandbox.catalog.get_index(index_id).artifacts}
    assert not registered & {a["sha256"] for a in outcome.artifacts}
    # A process that loads the index now starts from the compaction: nothing to apply.
    fresh = open_live(
        log,
        sandbox.catalog.get_index(index_id),
        space=model_key(version.embedding),
        normalized=False,
        fetch=store,
    )
    assert fresh.base == fresh.applied == head
    holds(fresh, written, deleted, sandbox.dim)
    # Compacting again to the same position records nothing new.
    again = compact_to_head()
    assert again.position == again.started_at == head
    assert len(log.compactions(index_id)) == 1
    # The router serving an overlay it cannot fold moves to the compacted artifacts.
    deadline = time.monotonic() + 10
    while kind == "faiss_hnsw" and time.monotonic() < deadline:
        now = router.searcher(index_id)
        if isinstance(now, LiveIndex) and now.base == head:
            break
        time.sleep(0.05)
    swapped = router.searcher(index_id)
    assert isinstance(swapped, LiveIndex)
    router.settle("default", "docs")
    assert swapped.kept == 0
    assert swapped.laid_over == 0
    router.close()


def test_a_shard_rebuilt_with_its_overlay_holds_its_vectors_once() -> None:
    """A rebuilt shard's records (dropped ones closed up, written ones appended) are the
    filtered concatenation, made in the shard's own arrays: numpy's allocations while they are
    assembled stay far under the shard's vectors (the filtered copy and the concatenation
    they replace came to twice them)."""
    n, dim = 40_000, 64
    rng = np.random.default_rng(7)
    add_ids = np.arange(n * 2, n * 2 + n // 5, dtype=np.int64)
    add_vectors = rng.normal(size=(len(add_ids), dim)).astype(np.float32)
    # The shard's records as ``records(room)`` gives them: room after them for the added.
    ids = np.empty(n + len(add_ids), np.int64)
    ids[:n] = rng.permutation(n * 2)[:n]
    vectors = np.empty((n + len(add_ids), dim), np.float32)
    vectors[:n] = rng.normal(size=(n, dim))
    hidden = np.sort(rng.choice(ids[:n], n // 10, replace=False))
    keep = ~np.isin(ids[:n], hidden)
    want_ids = np.concatenate([ids[:n][keep], add_ids])
    want_vectors = np.concatenate([vectors[:n][keep], add_vectors])
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        got_ids, got_vectors = with_overlay(ids, vectors, n, hidden, add_ids, add_vectors)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_vectors, want_vectors)
    # One block of moved rows (8,192 of this shard's 40,000) is about 0.2 of its vectors; the
    # filtered copy and the concatenation this replaces came to 2.
    extra = (peak - before) / (n * dim * 4)
    assert extra < 0.3, f"assembling held {extra:.2f}x the shard's vectors beside them"


def test_a_compaction_stopped_after_a_checkpoint_resumes_from_it(sandbox: Sandbox) -> None:
    _, index_id = seeded(sandbox, "hnswlib_hnsw")
    router = Router(sandbox.catalog, refresh_seconds=0.1)
    written, deleted = write_traffic(router, sandbox.dim, 8)
    router.close()
    log = ChangeLog(sandbox.catalog)
    head = log.head("default", "docs")
    version = sandbox.catalog.find_version("default", "docs", "v1")
    assert version is not None
    space = model_key(version.embedding)
    seen: list[Checkpoint] = []

    class KilledError(Exception):
        pass

    def crash_after_a_checkpoint(last: Checkpoint | None, applied: int) -> None:
        if last is not None:
            seen.append(last)
            raise KilledError

    live = router.searcher(index_id)
    assert isinstance(live, LiveIndex)
    fetch = live.fetch
    compact_to_head = partial(
        compact,
        sandbox.catalog,
        index_id,
        head,
        space=space,
        normalized=False,
        fetch=fetch,
        checkpoint_every=300,
    )
    with pytest.raises(KilledError):
        compact_to_head(on_progress=crash_after_a_checkpoint)
    assert log.compacted(index_id) is None
    checkpoint = seen[0]
    assert 0 < checkpoint.position < head
    outcome = compact_to_head(resume=checkpoint)
    assert outcome.resumed_from == checkpoint.position
    assert outcome.applied == log.count_after("default", "docs", checkpoint.position)
    assert outcome.position == head
    fresh = open_live(
        log, sandbox.catalog.get_index(index_id), space=space, normalized=False, fetch=fetch
    )
    holds(fresh, written, deleted, sandbox.dim)


@pytest.mark.timeout(300)
async def test_compaction_resumes_after_its_worker_is_killed(
    env: WorkflowEnvironment, sandbox: Sandbox
) -> None:
    """The worker running a compaction is killed once the activity has heartbeated a
    checkpoint; a new worker resumes from that checkpoint, not from the beginning."""
    _, index_id = seeded(sandbox, "hnswlib_hnsw")
    router = Router(sandbox.catalog, refresh_seconds=0.1)
    written, deleted = write_traffic(router, sandbox.dim, 20)  # 4,000 log entries
    router.close()
    log = ChangeLog(sandbox.catalog)
    head = log.head("default", "docs")
    client = env.client
    queue = f"compact-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(
        sandbox.root, client.service_client.config.target_host, queue, sandbox.catalog.url
    )
    try:
        handle = await start_compaction(
            client,
            CompactionRequest(
                tenant="default",
                collection="docs",
                settle_seconds=0,
                checkpoint_every=500,
                max_entries_per_second=400,  # ~10 s in all: time to kill it in the middle
                heartbeat_seconds=2,
                requested_by="test",
            ),
            task_queue=queue,
        )
        checkpoint = None
        deadline = time.monotonic() + 120
        while checkpoint is None:
            assert time.monotonic() < deadline, "no checkpoint was heartbeated"
            described = await handle.describe()
            for pending in described.raw_description.pending_activities:
                if pending.heartbeat_details.payloads:
                    (progress,) = await client.data_converter.decode(
                        pending.heartbeat_details.payloads, [CompactionProgress]
                    )
                    if progress.checkpoint_position is not None:
                        checkpoint = progress.checkpoint_position
            await asyncio.sleep(0.1)
        worker.kill()
        assert log.compacted(index_id) is None  # killed in the middle
        worker.restart()
        result = await asyncio.wait_for(handle.result(), timeout=180)
    finally:
        worker.stop()
    assert result.attempt >= 2
    assert result.resumed_from is not None
    assert result.resumed_from >= checkpoint
    assert result.position == head
    assert result.applied == log.count_after("default", "docs", result.resumed_from)
    assert log.compacted(index_id) == (head, result.artifacts)
    version = sandbox.catalog.find_version("default", "docs", "v1")
    assert version is not None
    served = router.searcher(index_id)
    assert isinstance(served, LiveIndex)
    fresh = open_live(
        log,
        sandbox.catalog.get_index(index_id),
        space=model_key(version.embedding),
        normalized=False,
        fetch=served.fetch,
    )
    assert fresh.base == head
    holds(fresh, written, deleted, sandbox.dim)
    entries = [e for e in sandbox.catalog.entries() if e.kind == "index.compacted"]
    assert [e.data["position"] for e in entries] == [head]
