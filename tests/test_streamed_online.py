"""Changes replayed onto the target after the copy keep the shard checks the copy streamed
current: after upserts, deletes, inserts, records newly quarantined or no longer quarantined,
the streamed profiles and exact neighbours equal a full read of both versions figure by figure,
also after a replay that died between its write ahead and its last step, and the shards keep
basis ``streamed``. A change the streamed figures cannot follow (a query's kept neighbours run
out, the record of the smallest or largest norm goes) sends its shard to the full read, saying
why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
import pytest
from temporalio.testing import ActivityEnvironment

from tests.conftest import Sandbox, postgres_database
from tests.test_activities import task
from tests.test_backfill import poison
from tests.test_capture import _pg, _vec, items_spec, items_table
from tests.test_streamed_checks import _all_copied, _copied, _copy
from vecmigrate import validation
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.data import capture
from vecmigrate.data.backfill import TargetView, open_source, open_target, prepare
from vecmigrate.data.quarantine import Quarantine
from vecmigrate.model.gates import ShardCheck
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import CaptureInput, CopyShardInput, ShardRef, ValidateShardInput
from vecmigrate.records.batch import Faults
from vecmigrate.records.ids import id_array
from vecmigrate.records.vectors import Ids
from vecmigrate.validation import stream
from vecmigrate.validation.gates import parity_verdicts


def _check(
    acts: MigrationActivities, spec: MigrationSpec, shard: ShardRef, after: int | None = None
) -> ShardCheck:
    inp = ValidateShardInput(**task(acts, spec), shard=shard, round=0, volatile_after=after)
    return ActivityEnvironment().run(acts.validate_shard, inp)


def _equal_to_a_full_read(
    acts: MigrationActivities,
    spec: MigrationSpec,
    shards: list[ShardRef],
    after: int | None = None,
    changed: Callable[[], Ids] | None = None,
) -> list[ShardCheck]:
    """Validate every shard, and compare each check, its excluded count and its exact
    neighbours with a full read of both versions now, figure by figure (a read that leaves
    out the records ``changed`` names, as the check leaves out those written since ``after``)."""
    checks = [_check(acts, spec, s, after) for s in shards]
    queries = stream.stored_queries(acts.journal, spec)
    assert queries is not None
    source, target = open_source(spec), open_target(spec)
    for shard, check in zip(shards, checks, strict=True):
        knn = queries.exact_search(spec)
        read = validation.check_shard(spec, source, target, shard, changed, truth=knn)
        assert check.source.model_dump() == read.source.model_dump()
        assert check.target.model_dump() == read.target.model_dump()
        assert check.excluded == read.excluded
        found = acts.journal.truths(spec.migration_id, 0, queries.digest(), [shard.index])
        assert found is not None
        (d, i), (rd, ri) = found[0], knn.result()
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_allclose(d, rd, rtol=1e-5, atol=1e-5)
    return checks


def _replay(acts: MigrationActivities, spec: MigrationSpec, ids: list[int]) -> None:
    """What the capture's replay does with a batch of changed ids: the source's records now
    brought onto the target, the streamed figures kept current."""
    source, target = open_source(spec), open_target(spec)
    view = TargetView.of(acts.catalog, spec, target)
    arr = id_array(ids, source.schema.id_kind)
    stream.StreamedReplay(acts.journal, spec, source, target, view).write(
        arr, source.fetch_records(arr)
    )


def _neighbours(acts: MigrationActivities, spec: MigrationSpec, shard: ShardRef) -> np.ndarray:
    """The exact neighbours the shard's stream keeps, per query (-1 padded)."""
    row = acts.journal.stream(spec.migration_id, shard.index)
    assert row is not None
    queries = stream.stored_queries(acts.journal, spec)
    found = stream.ShardStream.resume(spec, shard, row, queries)
    assert found is not None
    assert found.knn is not None
    return found.knn.i


def test_replayed_upserts_deletes_and_quarantines_keep_the_shards_streamed(
    sandbox: Sandbox,
) -> None:
    acts, spec, shards = _copied(sandbox)
    poison(sandbox, spec, 31)  # quarantined by the copy
    for s in shards:
        _copy(acts, spec, s)
    source = open_source(spec)
    dim = spec.source.embedding.dimension
    rng = np.random.default_rng(7)
    kept = _neighbours(acts, spec, shards[0])
    nearest = [int(x) for x in kept[:, 0] if x != -1]
    # Changed on the source behind the router (as plain SQL would): nearest neighbours of the
    # gate's queries moved and deleted, other records moved, new records, the quarantined
    # record fixed.
    moved = [*nearest[:3], 11, 12, 13, 31]
    gone = [*nearest[3:6], 21, 22]
    source.upsert(np.array(moved, np.int64), rng.normal(size=(len(moved), dim)).astype("f4"))
    source.delete(np.array(gone, np.int64))
    new = list(range(50_000, 50_020))
    source.upsert(np.array(new, np.int64), rng.normal(size=(len(new), dim)).astype("f4"))
    _replay(acts, spec, sorted({*moved, *gone, *new}))
    checks = _equal_to_a_full_read(acts, spec, shards)
    assert [c.basis for c in checks] == ["streamed"] * 3
    assert sum(sum(c.source.quarantined.values()) for c in checks) == 0
    assert sum(c.target.count for c in checks) == 3000 - len(gone) + len(new)
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))

    # The record once quarantined deleted, inserted again, with an id nobody holds.
    source.delete(np.array([31], np.int64))
    _replay(acts, spec, [31])
    source.upsert(np.array([31], np.int64), rng.normal(size=(1, dim)).astype("f4"))
    _replay(acts, spec, [31, 31_000_000])
    checks = _equal_to_a_full_read(acts, spec, shards)
    assert [c.basis for c in checks] == ["streamed"] * 3

    # A replayed record the source's read cannot hold (NaN) is not returned by the fetch the
    # replay makes: its shard's source count tells, and the shard is read in full.
    poison(sandbox, spec, 31)
    _replay(acts, spec, [31])
    checks = _equal_to_a_full_read(acts, spec, shards)
    read = [c for c in checks if c.basis != "streamed"]
    assert len(read) == 1
    assert read[0].basis.startswith("read: the source holds ")
    assert read[0].source.quarantined == {"nonfinite": 1}


def test_a_replay_that_died_between_its_write_ahead_and_its_end_is_counted_once(
    sandbox: Sandbox,
) -> None:
    acts, spec, shards = _all_copied(sandbox)
    source, target = open_source(spec), open_target(spec)
    dim = spec.source.embedding.dimension
    rng = np.random.default_rng(3)
    view = TargetView.of(acts.catalog, spec, target)
    mid = spec.migration_id

    def died(ids: list[int], write: bool) -> None:
        """The replay's write ahead, then (``write``) the target's write, then the worker
        dies before the pending figures are promoted (and the capture forgets the batch)."""
        arr = id_array(ids, source.schema.id_kind)
        replay = stream.StreamedReplay(acts.journal, spec, source, target, view)
        current = source.fetch_records(arr)
        seen, written, faults = view.split(current)
        acts.journal.set_pending_streams(mid, replay._prepare(arr, seen, faults, written))
        if write:
            held = set(written.labels.tolist())
            target.write(written)
            target.delete(np.array([i for i in ids if i not in held], np.int64))

    # Died after writing the target: the next check may not trust the figures yet, the next
    # replay (the capture replays the same batch again) settles them and counts it once.
    source.upsert(np.arange(100, 130), rng.normal(size=(30, dim)).astype("f4"))
    source.delete(np.arange(200, 210))
    batch = [*range(100, 130), *range(200, 210)]
    died(batch, write=True)
    touched = {s.index for s in shards if acts.journal.pending_stream(mid, s.index) is not None}
    assert touched
    before = [_check(acts, spec, s) for s in shards]
    assert {c.shard for c in before if c.basis != "streamed"} == touched
    assert all(
        c.basis == "read: a replay into the shard is under way"
        for c in before
        if c.shard in touched
    )
    _replay(acts, spec, batch)
    checks = _equal_to_a_full_read(acts, spec, shards)
    assert [c.basis for c in checks] == ["streamed"] * 3

    # Died before writing the target: the figures stay as they were; the replay again counts it.
    source.upsert(np.arange(300, 320), rng.normal(size=(20, dim)).astype("f4"))
    died(list(range(300, 320)), write=False)
    _replay(acts, spec, list(range(300, 320)))
    checks = _equal_to_a_full_read(acts, spec, shards)
    assert [c.basis for c in checks] == ["streamed"] * 3

    # Died, and the target then holds neither state for the ids (changed behind the replay):
    # the figures are not used, the shard is read in full.
    source.upsert(np.arange(400, 405), rng.normal(size=(5, dim)).astype("f4"))
    died(list(range(400, 405)), write=True)
    target.upsert(np.array([400], np.int64), np.ones((1, dim), np.float32))
    for s in shards:
        stream.StreamedReplay(acts.journal, spec, source, target, view).settle(s)
    checks = [_check(acts, spec, s) for s in shards]
    spoiled = [c for c in checks if c.basis != "streamed"]
    assert len(spoiled) == 1
    assert spoiled[0].basis == "read: a replay into the shard died between its writes to the target"


def test_a_change_the_stream_cannot_follow_sends_its_shard_to_the_full_read(
    sandbox: Sandbox,
) -> None:
    acts, spec, shards = _all_copied(sandbox)
    source = open_source(spec)
    first = shards[0]
    # Every kept neighbour of one query deleted: its list runs out.
    kept = _neighbours(acts, spec, first)
    row = next(r for r in kept if (r != -1).all())
    source.delete(row.astype(np.int64))
    _replay(acts, spec, [int(x) for x in row])
    check = _check(acts, spec, first)
    assert check.basis.startswith("read: replayed deletes or moves left ")
    assert "fewer kept exact neighbours than the" in check.basis
    # The record of the largest norm of another shard deleted: its bounds are unknown.
    second = shards[1]
    batch = next(iter(source.iter_shard(second, 10_000)))
    norms = np.linalg.norm(batch.vectors, axis=1)
    top = int(batch.ids[int(np.argmax(norms))])
    source.delete(np.array([top], np.int64))
    _replay(acts, spec, [top])
    check = _check(acts, spec, second)
    assert check.basis == (
        "read: a replayed change took out the record of the shard's smallest or largest norm"
    )
    assert _check(acts, spec, shards[2]).basis == "streamed"

    # Figures a change does not fit (a record the quarantine names, yet the copy wrote it, gone
    # from the target behind them): the replay still writes, the shard is read in full.
    third = shards[2]
    victim = int(next(iter(source.iter_shard(third, 10))).ids[0])
    faults = Faults()
    faults.add(victim, "nonfinite", "noted behind the copy's back")
    Quarantine(acts.catalog).add(spec.migration_id, third.index, faults)
    target = open_target(spec)
    target.delete(np.array([victim], np.int64))
    _replay(acts, spec, [victim])
    assert target.fetch_records(id_array([victim], target.schema.id_kind)).labels.tolist() == [
        victim
    ]
    check = _check(acts, spec, third)
    assert check.basis.startswith("read: a replayed change does not fit the streamed figures: ")


@pytest.mark.integration
def test_plain_sql_writes_replayed_by_the_capture_keep_the_shards_streamed(
    postgres: Any, sandbox: Sandbox
) -> None:
    """On PostgreSQL: the application's table adopted, its writes captured by the trigger from
    before the copy, replayed by the capture's own replay after it; every shard keeps basis
    ``streamed`` and equals a full read (the replay run by its activity, as the workflow
    runs it)."""
    url = postgres_database(postgres)
    items_table(url, rows=600)
    spec = items_spec(url, batch_size=100)
    acts = MigrationActivities(sandbox.catalog.url)
    shards = prepare(sandbox.catalog, spec, "t").shards
    capture.install(spec)
    after = 0  # nothing goes through the router
    for s in shards:
        done = ActivityEnvironment().run(
            acts.copy_shard, CopyShardInput(**task(acts, spec), shard=s)
        )
        assert done.complete
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        conn.execute("UPDATE items SET title = 'payload only' WHERE id = 1")
        conn.execute("DELETE FROM items WHERE id IN (2, 5, 8)")
        conn.execute(f"INSERT INTO items VALUES (5000, 'new', 1, '{_vec(np.ones(16))}')")
        conn.execute(f"UPDATE items SET embedding = '{_vec(np.arange(16) + 1.0)}' WHERE id = 9")
    # Captured and not replayed yet: left out of the figures by what the copy counted for them,
    # as the full read leaves them out.
    before = [_check(acts, spec, s, after) for s in shards]
    assert [c.basis for c in before] == ["streamed"] * len(shards)
    assert sum(c.excluded for c in before) == 6
    done = ActivityEnvironment().run(
        acts.capture_replay, CaptureInput(**task(acts, spec), seconds=10)
    )
    assert done.drained
    assert done.applied == 6
    checks = _equal_to_a_full_read(acts, spec, shards, after)
    assert [c.basis for c in checks] == ["streamed"] * len(shards)
    assert sum(c.target.count for c in checks) == 600 - 3 + 1
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))
    capture.remove(spec, replay_first=False)
