"""Writes through the router during a migration keep the shard checks the copy streamed: the
records the change log names are left out of both streamed profiles by the shares the copy
counted for them (its file of what it counted, per batch and side) and out of the kept exact
neighbours, and every shard's figures equal a full read that leaves the same records out,
figure by figure, also after a copy killed mid-shard and resumed while the router wrote. A
write the figures cannot leave out (a query's kept neighbours run out, the record of the
smallest or largest norm, a file of what the copy counted gone) sends its shard to the full
read, saying why."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid

import numpy as np
import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from tests.conftest import Sandbox, vecmigrate
from tests.test_activities import copy_killed_at_heartbeat, retry, task
from tests.test_backfill import poison
from tests.test_streamed_checks import _copied, _copy
from tests.test_streamed_online import _check, _equal_to_a_full_read
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.control.client import MigrationClient
from vecmigrate.data import retention
from vecmigrate.data.backfill import open_source, open_target, prepare
from vecmigrate.indexes.sizes import tree_bytes
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import NAME_PATTERN, MigrationSpec
from vecmigrate.model.tasks import (
    CopyShardInput,
    LedgerInput,
    ShardRef,
    StorageInput,
)
from vecmigrate.records.vectors import Ids
from vecmigrate.validation import stream
from vecmigrate.validation.gates import parity_verdicts


class Writes:
    """Writes as the router makes them during dual-write: logged, then on both versions."""

    def __init__(self, sandbox: Sandbox, spec: MigrationSpec) -> None:
        self.spec = spec
        self.log = ChangeLog(sandbox.catalog)
        self.after = self.log.head(spec.tenant, spec.collection)
        self.source, self.target = open_source(spec), open_target(spec)

    def upsert(self, ids: list[int], vectors: np.ndarray) -> None:
        arr = np.array(ids, np.int64)
        vectors = np.asarray(vectors, np.float32)
        self.log.append(self.spec.tenant, self.spec.collection, "upsert", arr, vectors)
        self.source.upsert(arr, vectors)
        self.target.upsert(arr, vectors)

    def delete(self, ids: list[int]) -> None:
        arr = np.array(ids, np.int64)
        self.log.append(self.spec.tenant, self.spec.collection, "delete", arr)
        self.source.delete(arr)
        self.target.delete(arr)

    def changed(self) -> Ids:
        return self.log.changed_ids(self.spec.tenant, self.spec.collection, self.after)


def _kept(acts: MigrationActivities, spec: MigrationSpec, shard: ShardRef) -> np.ndarray:
    """The exact neighbours the shard's stream keeps, per query (-1 padded)."""
    row = acts.journal.stream(spec.migration_id, shard.index)
    assert row is not None
    found = stream.ShardStream.resume(spec, shard, row, stream.stored_queries(acts.journal, spec))
    assert found is not None
    assert found.knn is not None
    return found.knn.i


def _interior(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Vectors of norm 15, between the seeded records' smallest and largest (8 and 26): a
    record written with one never holds its shard's bound."""
    v = rng.normal(size=(n, dim))
    return 15.0 * v / np.linalg.norm(v, axis=1, keepdims=True)


def _bounds(writes: Writes, shards: list[ShardRef]) -> set[int]:
    """The records of the smallest and the largest norm of each shard (of finite vectors)."""
    out: set[int] = set()
    for shard in shards:
        ids = np.concatenate([b.ids for b in writes.source.iter_shard(shard, 10_000)])
        vectors = np.concatenate([b.vectors for b in writes.source.iter_shard(shard, 10_000)])
        norms = np.linalg.norm(vectors, axis=1)
        norms[~np.isfinite(norms)] = np.nan
        out |= {int(ids[np.nanargmin(norms)]), int(ids[np.nanargmax(norms)])}
    return out


def test_router_writes_leave_the_shards_streamed_equal_to_a_full_read_after_a_kill(
    sandbox: Sandbox,
) -> None:
    acts, spec, shards = _copied(sandbox)
    poison(sandbox, spec, 17)  # quarantined by the copy; the router fixes it later
    writes = Writes(sandbox, spec)
    dim = spec.source.embedding.dimension
    rng = np.random.default_rng(11)
    first = shards[0]
    # Written records holding no shard's norm bound (taking one out sends the shard to the
    # full read: the next test).
    bounds = _bounds(writes, shards)
    ids = np.sort(np.concatenate([b.ids for b in writes.source.iter_shard(first, 10_000)]))
    ids = ids[~np.isin(ids, list(bounds))]

    # Shard one: the router writes while it is copied (records before and after where the copy
    # stands), the worker dies at its fifth heartbeat and the copy resumes.
    writes.upsert([int(ids[2]), int(ids[900])], _interior(rng, 2, dim))
    inp = CopyShardInput(**task(acts, spec), shard=first)
    copy_killed_at_heartbeat(acts, inp, 5)
    writes.upsert([int(ids[3]), int(ids[450])], _interior(rng, 2, dim))
    writes.delete([int(ids[4]), int(ids[451])])
    assert retry().run(acts.copy_shard, inp).complete
    for s in shards[1:]:
        _copy(acts, spec, s)
    row = acts.journal.stream(spec.migration_id, first.index)
    assert row is not None
    counted = stream.ShardStream.resume(spec, first, row, stream.stored_queries(acts.journal, spec))
    assert counted is not None
    assert counted.counted is not None
    # One part per batch and side: the batch copied twice was written again, not added.
    parts = counted.counted.root / counted.counted.gen
    assert len(list(parts.iterdir())) == 2 * counted.counted.parts

    # After the copy: nearest neighbours of the gate's queries moved and deleted, other records
    # moved, new records written next to queries, the quarantined record fixed.
    nearest = [int(x) for x in _kept(acts, spec, first)[:, 0] if x != -1 and x not in bounds]
    assert not bounds & {11, 12, 13, 17, 21, 22}
    writes.upsert([*nearest[:3], 11, 12, 13, 17], _interior(rng, 7, dim))
    writes.delete([*nearest[3:6], 21, 22])
    queries = stream.stored_queries(acts.journal, spec)
    assert queries is not None
    near = queries.target[:10] + rng.normal(scale=1e-3, size=(10, dim))
    writes.upsert(list(range(50_000, 50_010)), near)
    checks = _equal_to_a_full_read(acts, spec, shards, writes.after, writes.changed)
    assert [c.basis for c in checks] == ["streamed"] * 3
    assert all(c.excluded for c in checks), [c.excluded for c in checks]
    assert sum(sum(c.source.quarantined.values()) for c in checks) == 0
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))
    # The new records near the queries are in the ground truth, as the full read has them.
    truths = acts.journal.truths(spec.migration_id, 0, queries.digest(), [s.index for s in shards])
    assert truths is not None
    assert np.isin(np.arange(50_000, 50_010), np.concatenate([i for _, i in truths])).all()


def test_router_writes_the_figures_cannot_leave_out_send_their_shard_to_the_full_read(
    sandbox: Sandbox,
) -> None:
    acts, spec, shards = _copied(sandbox)
    writes = Writes(sandbox, spec)
    for s in shards:
        _copy(acts, spec, s)
    first, second, third = shards
    # Every kept neighbour of one query deleted: its list runs short.
    kept = _kept(acts, spec, first)
    row = next(r for r in kept if (r != -1).all())
    writes.delete([int(x) for x in row])
    # The record of the largest norm of another shard moved.
    batch = next(iter(writes.source.iter_shard(second, 10_000)))
    top = int(batch.ids[int(np.argmax(np.linalg.norm(batch.vectors, axis=1)))])
    writes.upsert([top], np.full((1, spec.source.embedding.dimension), 0.01))
    # The third shard's file of what its copy counted is gone.
    counted = stream.Counted.shard_root(spec, third.index)
    assert counted.is_dir()
    shutil.rmtree(counted)
    victim = int(next(iter(writes.source.iter_shard(third, 10))).ids[0])
    writes.delete([victim])

    checks = _equal_to_a_full_read(acts, spec, shards, writes.after, writes.changed)
    n = row.size
    assert checks[0].basis.startswith(
        f"read: {n} records of the shard changed during the migration; left out, they leave "
    )
    assert "fewer kept exact neighbours than the" in checks[0].basis
    assert checks[1].basis == (
        "read: 1 records of the shard changed during the migration; one of them held the "
        "shard's smallest or largest norm"
    )
    assert checks[2].basis.startswith(
        "read: 1 records of the shard changed during the migration; the file of what the copy "
        "counted cannot be read: "
    )


def test_a_resumed_copy_writes_its_files_again_and_a_fresh_one_removes_the_old(
    sandbox: Sandbox,
) -> None:
    """The parts the state names are exactly the batches it counts: a part written past the
    cursor is written again by the resume; a copy from the beginning starts a new directory."""
    acts, spec, shards = _copied(sandbox)
    first = shards[0]
    inp = CopyShardInput(**task(acts, spec), shard=first)
    copy_killed_at_heartbeat(acts, inp, 3)
    row = acts.journal.stream(spec.migration_id, first.index)
    assert row is not None
    died = row.state["counted"]
    # Three batches written; the journal's cursor (and the parts named) at the third's start.
    assert died["parts"] == 2
    root = stream.Counted.shard_root(spec, first.index)
    assert sorted(p.name for p in (root / died["gen"]).iterdir()) == [
        f"{i:06d}.{side}.npy" for i in range(3) for side in ("source", "target")
    ]
    assert retry().run(acts.copy_shard, inp).complete
    row = acts.journal.stream(spec.migration_id, first.index)
    assert row is not None
    assert row.state["counted"]["gen"] == died["gen"]
    found = stream.ShardStream.resume(spec, first, row, stream.stored_queries(acts.journal, spec))
    assert found is not None
    assert found.counted is not None
    for side, profile in zip(stream.SIDES, (found.source, found.target), strict=True):
        shares = found.counted.read(side)
        assert len(shares) == profile.count == len(np.unique(shares["label"]))
        assert int(shares["hash"].sum(dtype=np.uint64)) == profile.records.total
    # A copy from the beginning (the stream dropped, the journal's cursor reset) starts over.
    fresh = stream.open_stream(
        acts.journal, spec, first, True, open_source(spec), open_target(spec)
    )
    assert fresh is not None
    assert fresh.counted is not None
    assert fresh.counted.gen != died["gen"]
    assert not (root / died["gen"]).exists()


def test_what_the_copy_counted_goes_when_its_migration_ends_and_never_another_ones(
    sandbox: Sandbox,
) -> None:
    """Finalize, a rollback or an abort (their phase's ledger entry) removes the migration's
    directory of what its copy counted, twice as well as once; gc removes those of ended
    migrations whose removal did not run (and of those named as ended), never a running one's."""
    sandbox.seed(600)
    acts = MigrationActivities(sandbox.catalog.url)
    hnsw = {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
    specs, shards = [], {}
    for name in ("v2", "v3", "v4", "v5", "v6"):
        spec = sandbox.spec(
            target=sandbox.version(name, hnsw).model_dump(mode="json"),
            shards={"count": 2},
            batch_size=100,
            gates={"sample_queries": 20},
        )
        shards[spec.migration_id] = prepare(sandbox.catalog, spec, "t").shards
        for shard in shards[spec.migration_id]:
            _copy(acts, spec, shard)
        assert any(retention.streamed_dir(spec).rglob("*.npy"))
        specs.append(spec)
    finalized, rolled_back, died, terminated, running = specs

    def enter(spec: MigrationSpec, old: Phase, new: Phase) -> None:
        entry = LedgerInput(
            migration_id=spec.migration_id,
            tenant=spec.tenant,
            collection=spec.collection,
            event_key=f"{spec.migration_id}/{new}",
            kind="phase",
            actor="alice",
            data={"from": old, "to": new},
        )
        ActivityEnvironment().run(acts.record, entry)

    # Finalize: the storage figures taken once finalized go without it, then COMPLETED.
    ActivityEnvironment().run(
        acts.record_storage, StorageInput(**task(acts, finalized), stage="finalized")
    )
    assert not retention.streamed_dir(finalized).exists()
    enter(finalized, Phase.FINALIZING, Phase.COMPLETED)
    enter(finalized, Phase.FINALIZING, Phase.COMPLETED)  # a retry of the step
    assert not retention.streamed_dir(finalized).exists()
    enter(rolled_back, Phase.VALIDATING, Phase.ROLLING_BACK)
    assert retention.streamed_dir(rolled_back).is_dir()  # not ended yet
    enter(rolled_back, Phase.ROLLING_BACK, Phase.ROLLED_BACK)
    assert not retention.streamed_dir(rolled_back).exists()
    for other in (died, terminated, running):
        assert any(retention.streamed_dir(other).rglob("*.npy"))

    # Aborted with its worker gone before the removal ran; terminated by hand mid-copy.
    sandbox.catalog.set_migration_phase(died.migration_id, Phase.ABORTED)
    held = tree_bytes(retention.streamed_dir(died))
    dry = retention.gc(sandbox.catalog, "alice", dry_run=True)
    assert (dry.streamed_removed, dry.streamed_bytes_removed) == (1, held)
    assert retention.streamed_dir(died).is_dir()
    done = retention.gc(sandbox.catalog, "alice", ended=frozenset({terminated.migration_id}))
    assert done.streamed_removed == 2
    assert not retention.streamed_dir(died).exists()
    assert not retention.streamed_dir(terminated).exists()
    assert retention.gc(sandbox.catalog, "alice").streamed_removed == 0
    # The running migration's files are all there, and its checks still use them.
    assert retention.streamed_dir(running).is_dir()
    for shard in shards[running.migration_id]:
        assert _check(acts, running, shard, 0).basis == "streamed"


def test_no_version_can_be_named_as_the_directory_of_what_the_copies_counted() -> None:
    """The counted files sit beside the collection's version directories: a version that could
    bear their directory's name would share it, and pruning that version would remove every
    migration's files. Version names begin with a letter or digit; the directory does not."""
    assert re.fullmatch(NAME_PATTERN, "streamed")
    assert not re.fullmatch(NAME_PATTERN, retention.STREAMED)


@pytest.mark.integration
async def test_vecmigrate_gc_ended_asks_temporal_and_removes_only_a_closed_migrations_files(
    client: Client, sandbox: Sandbox
) -> None:
    """`vecmigrate gc --ended ID` is for a migration whose execution closed without reaching an
    ended phase (terminated by hand, failed): the catalog still shows it mid-copy, so Temporal
    is asked. A migration still running is refused, with its files kept; a terminated one's
    files go, and no other migration's."""
    sandbox.seed(300)
    acts = MigrationActivities(sandbox.catalog.url)
    tag = uuid.uuid4().hex[:8]
    hnsw = {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
    specs = []
    for name in ("v2", "v3"):
        spec = sandbox.spec(
            id=f"gc-{name}-{tag}",
            target=sandbox.version(name, hnsw).model_dump(mode="json"),
            shards={"count": 1},
            batch_size=100,
            gates={"sample_queries": 20},
        )
        for shard in prepare(sandbox.catalog, spec, "t").shards:
            _copy(acts, spec, shard)
        assert any(retention.streamed_dir(spec).rglob("*.npy"))
        specs.append(spec)
    closed, running = specs
    mc = MigrationClient(client, f"nobody-{tag}")  # no worker: both stay where they are
    for spec in specs:
        await mc.start(spec, operator="alice")
    await client.get_workflow_handle(closed.migration_id).terminate("test: closed by hand")
    env = {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host}
    common = ["--catalog", sandbox.catalog.url]

    refused = await asyncio.to_thread(
        vecmigrate, "gc", "--ended", running.migration_id, *common, env=env
    )
    assert refused.returncode != 0
    assert f"--ended {running.migration_id}: its execution is still running" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert any(retention.streamed_dir(running).rglob("*.npy"))

    done = await asyncio.to_thread(
        vecmigrate, "gc", "--ended", closed.migration_id, *common, "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["streamed_removed"] == 1
    assert not retention.streamed_dir(closed).exists()
    assert any(retention.streamed_dir(running).rglob("*.npy"))
