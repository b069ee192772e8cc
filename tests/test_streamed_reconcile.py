"""The reconcile gate from the copy's streamed figures: a shard they vouch for is not read in
full (the records written during the migration are read from both versions instead), and it
gives what the full read gives; a shard they do not vouch for (a store that no longer matches
them, a record written during the migration that differs, ``gates.deep``) is read in full and
repaired, and its figures are not trusted again after a repair."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from temporalio.testing import ActivityEnvironment

from tests.conftest import Sandbox
from tests.test_activities import task
from tests.test_streamed_checks import _all_copied, _check, _copied, _copy, target_version
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.model.gates import DiffCounts, ShardReconcile
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import ReconcileShardInput, ShardRef
from vecmigrate.stores import WHOLE
from vecmigrate.validation import reconcile

__all__ = ["target_version"]  # the fixture, each kind of target store in turn


def _reconcile(
    acts: MigrationActivities,
    spec: MigrationSpec,
    shard: ShardRef,
    from_stream: bool = True,
    after: int | None = None,
) -> ShardReconcile:
    inp = ReconcileShardInput(
        **task(acts, spec), shard=shard, from_stream=from_stream, volatile_after=after
    )
    return ActivityEnvironment().run(acts.reconcile_shard, inp)


def _without(result: ShardReconcile, *fields: str) -> dict[str, Any]:
    return result.model_dump(exclude={"seconds", "basis", *fields})


def test_a_clean_copy_is_reconciled_from_the_stream_as_the_full_read_finds(
    sandbox: Sandbox, target_version: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    acts, spec, shards = _all_copied(sandbox, target_version)
    reads: list[int] = []
    scan = type(open_source(spec)).iter_shard

    def counted_scan(store: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return scan(store, *args, **kwargs)

    monkeypatch.setattr(type(open_source(spec)), "iter_shard", counted_scan)
    streamed = [_reconcile(acts, spec, s) for s in shards]
    assert [r.basis for r in streamed] == ["streamed"] * 3
    assert not reads  # the source not read in full
    monkeypatch.undo()
    full = [_reconcile(acts, spec, s, from_stream=False) for s in shards]
    assert [r.basis for r in full] == ["read"] * 3
    assert [_without(r) for r in streamed] == [_without(r) for r in full]
    assert sum(r.source_records for r in streamed) == open_source(spec).count(WHOLE) > 0
    assert all(r.found == DiffCounts() for r in streamed)


@pytest.mark.parametrize("lost", [True, False])
def test_a_write_during_the_migration_is_read_from_both_versions(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, lost: bool
) -> None:
    """A record written through the router since the migration began (the change log names
    it, before the minute a pass leaves out): its shard's figures leave it out and the record
    is read from both versions. Made in both, the shard stays streamed. Made in the source
    alone (``lost``, the target's write lost), it differs: the shard is read in full and
    repaired, the other shards stay streamed, and its figures are marked unusable (its shard
    check reads it in full)."""
    monkeypatch.setattr(
        reconcile, "volatile_mark", lambda log, tenant, collection: log.head(tenant, collection)
    )
    acts, spec, shards = _copied(sandbox)
    log = ChangeLog(sandbox.catalog)
    after = log.head(spec.tenant, spec.collection)
    for s in shards:
        _copy(acts, spec, s)
    victim = np.array([int(next(iter(open_source(spec).iter_shard(shards[1], 10))).ids[0])])
    new = np.full((1, spec.source.embedding.dimension), 5.0, np.float32)
    log.append(spec.tenant, spec.collection, "upsert", victim, new)
    for store in [open_source(spec)] + ([] if lost else [open_target(spec)]):
        store.upsert(victim, new)

    results = [_reconcile(acts, spec, s, after=after) for s in shards]
    assert results[0].basis == results[2].basis == "streamed"
    _, held = open_target(spec).fetch(victim)
    assert np.array_equal(held, new)
    if not lost:
        assert results[1].basis == "streamed"
        assert all(r.found == DiffCounts() for r in results)
        return
    assert results[1].basis == (
        "read: 1 records written during the migration differ between the versions"
    )
    assert results[1].found == results[1].repaired == DiffCounts(vector=1)
    assert results[1].again == DiffCounts()
    check = _check(acts, spec, shards[1])
    assert check.basis == "read: the reconcile gate repaired 1 records of the shard"
    assert _check(acts, spec, shards[0]).basis == "streamed"


@pytest.mark.parametrize("change", ["deleted", "changed"])
def test_a_target_changed_behind_the_router_is_read_in_full_and_repaired(
    sandbox: Sandbox, change: str
) -> None:
    """A target record deleted (the count shows it) or changed (the read-back sample, every
    record of shards this small, shows it) after the copy, behind the router and the change
    log."""
    acts, spec, shards = _all_copied(sandbox)
    target = open_target(spec)
    victim = np.array([int(next(iter(target.iter_shard(shards[2], 10))).ids[4])], np.int64)
    if change == "deleted":
        target.delete(victim)
    else:
        _, vec = target.fetch(victim)
        target.upsert(victim, vec + np.float32(0.25))
    results = [_reconcile(acts, spec, s) for s in shards]
    assert results[0].basis == results[1].basis == "streamed"
    assert results[2].basis.startswith("read: "), results[2].basis
    want = DiffCounts(missing=1) if change == "deleted" else DiffCounts(vector=1)
    assert results[2].found == results[2].repaired == want
    assert results[2].again == DiffCounts()
    assert target.checksum(shards[2]) == open_source(spec).checksum(shards[2])


def test_deep_reads_every_shard_in_full(sandbox: Sandbox) -> None:
    acts, spec, shards = _all_copied(sandbox, deep=True)
    deep = [_reconcile(acts, spec, s) for s in shards]
    assert {r.basis for r in deep} == {"read: gates.deep asks for the full re-read"}
    assert all(r.found == DiffCounts() for r in deep)


def test_a_workflow_from_before_reads_every_shard_in_full(sandbox: Sandbox) -> None:
    """Its reconcile tasks carry neither the watermark nor leave to use the stream."""
    acts, spec, shards = _all_copied(sandbox)
    inp = ReconcileShardInput.model_validate(
        {"shard": shards[0].model_dump(mode="json"), **task(acts, spec)}
    )
    result = ActivityEnvironment().run(acts.reconcile_shard, inp)
    assert result.basis == "read"
    assert result.found == DiffCounts()
