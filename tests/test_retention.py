"""Retention and pruning: gc refuses each protected case with its reason and touches nothing,
prunes what nothing needs; a retention timer prunes a retired version on a real dev server (with
seconds for days); change logs compacted and truncated; unreferenced artifacts collected."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.catalog.changelog import DELETE, UPSERT, ChangeLog
from vecmigrate.catalog.retention import RetentionLog
from vecmigrate.catalog.schedules import ScheduleStore
from vecmigrate.control.client import MigrationClient
from vecmigrate.data.datasets import clustered
from vecmigrate.data.retention import collect_artifacts, gc, log_floor, prune_version, why_kept
from vecmigrate.data.seed import sequential_ids
from vecmigrate.indexes.build import artifact_dir, build_shard, register_index
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.stores import WHOLE, open_store
from vecmigrate.stores.base import Scope

FLAT = {"kind": "faiss_flat"}


def add_version(sandbox: Sandbox, name: str, state: str, n: int = 300) -> None:
    """A version with records and an index artifact, in ``state``, beside the serving one."""
    vectors = clustered(n, sandbox.dim, clusters=8, seed=3)
    catalog = sandbox.catalog
    version = sandbox.version(name, FLAT)
    catalog.register_version(
        "default", "docs", name, version.embedding, version.store.model_dump(mode="json"), state
    )
    store = open_store(sandbox.store, Scope("default", "docs", name), sandbox.dim)
    store.upsert(sequential_ids(n), vectors)
    directory = artifact_dir(sandbox.store, "default", "docs", name)
    ref = build_shard(store, version, WHOLE, directory)
    register_index(catalog, "default", "docs", version, [ref], None)


def count(sandbox: Sandbox, version: str) -> int:
    return open_store(sandbox.store, Scope("default", "docs", version)).count()


@pytest.fixture
def collection(sandbox: Sandbox) -> Sandbox:
    sandbox.seed(500)
    return sandbox


@pytest.mark.integration  # runs the command in a process
def test_gc_refuses_each_protected_case_with_its_reason(collection: Sandbox) -> None:
    catalog = collection.catalog
    now = datetime.now(UTC)

    def kept(version: str) -> str | None:
        return why_kept(catalog, "default", "docs", version, now)

    assert kept("v1") == "routing reads it: it serves the collection"
    add_version(collection, "v2", "retained")
    add_version(collection, "v3", "retained")
    add_version(collection, "v4", "standby")
    add_version(collection, "v5", "retained")
    add_version(collection, "v6", "retained")
    add_version(collection, "v7", "retained")
    add_version(collection, "v8", "building")
    routing = catalog.get_routing("default", "docs")
    assert routing is not None
    catalog.compare_and_set_routing(
        "default",
        "docs",
        routing.generation,
        "v1",
        routing.read_index,
        ["v1", "v2"],
        "test",
        "dual-write",
        "k1",
        candidate_version="v3",
    )
    assert kept("v2") == "routing writes to it (dual-write keeps it current)"
    assert kept("v3") == "routing names it as the candidate of shadow reads or a ramp"
    assert kept("v4") == "it is the rollback target of a cut-over still baking (standby)"
    running = collection.spec(
        source=collection.version("v5", FLAT).model_dump(mode="json"),
        target=collection.version("v9", FLAT).model_dump(mode="json"),
    )
    catalog.record_migration(running, "BACKFILLING", "alice")
    assert kept("v5") == f"migration {running.migration_id} (BACKFILLING) uses it as its source"
    data = collection.spec(
        source=collection.version("v6", FLAT).model_dump(mode="json")
    ).model_dump(mode="json", exclude={"id"})
    data["schedule"] = {"migrate": "as_written", "cron": ["0 3 * * *"]}
    ScheduleStore(catalog).store("nightly", MigrationSpec.model_validate(data), "alice")
    assert kept("v6") == "schedule nightly migrates from it as written"
    RetentionLog(catalog).left("default", "docs", "v7", "retired", "m-7", 3600)
    assert kept("v7").startswith("its retention keeps it until ")  # type: ignore[union-attr]
    assert kept("v8") == "it is building: only retained or abandoned versions are pruned"

    before = {v: count(collection, v) for v in ("v1", "v2", "v3", "v4", "v5", "v6", "v7")}
    report = gc(catalog, "alice")
    assert {v.version: v.action for v in report.verdicts} == {
        "v2": "kept",
        "v3": "kept",
        "v5": "kept",
        "v6": "kept",
        "v7": "kept",
    }
    assert {v: count(collection, v) for v in before} == before
    # Named on purpose: the command refuses with the reason and a non-zero exit.
    result = vecmigrate("gc", "--collection", "docs", "--version", "v6", "--catalog", catalog.url)
    assert result.returncode == 1
    assert (
        "refused: default/docs@v6 is kept: schedule nightly migrates from it as written"
        in result.stderr
    )
    # Retention is the one protection a named version may skip.
    forced = prune_version(
        catalog, "default", "docs", "v7", "alice", reason="test", ignore_retention=True
    )
    assert forced.action == "pruned"
    assert prune_version(catalog, "default", "docs", "v2", "alice", reason="t").action == "kept"


def test_gc_prunes_what_nothing_needs_and_a_dry_run_removes_nothing(collection: Sandbox) -> None:
    catalog = collection.catalog
    add_version(collection, "v2", "abandoned")
    directory = artifact_dir(collection.store, "default", "docs", "v2")
    assert any(directory.iterdir())
    dry = gc(catalog, "alice", dry_run=True)
    assert [(v.version, v.action) for v in dry.verdicts] == [("v2", "would prune")]
    assert count(collection, "v2") == 300
    done = gc(catalog, "alice")
    assert [(v.version, v.action) for v in done.verdicts] == [("v2", "pruned")]
    assert done.verdicts[0].freed_bytes > 300 * collection.dim * 4
    with pytest.raises(Exception, match="does not exist"):
        count(collection, "v2")
    assert not directory.exists()
    found = catalog.find_version("default", "docs", "v2")
    assert found is not None
    assert found.state == "pruned"
    entry = catalog.entry_by_key("prune/default/docs/v2")
    assert entry is not None
    assert entry.kind == "version.pruned"
    assert entry.data["was"] == "abandoned"
    assert count(collection, "v1") == 500  # the serving version is untouched
    again = prune_version(catalog, "default", "docs", "v2", "alice", reason="again")
    assert again.action == "kept"
    assert again.reason.startswith("already pruned")


def test_unreferenced_artifacts_are_collected(collection: Sandbox) -> None:
    directory = artifact_dir(collection.store, "default", "docs", "v1")
    kept = sorted(p.name for p in directory.iterdir())
    (directory / "shard-0000-0123456789abcdef.faiss").write_bytes(b"x" * 1000)
    (directory / ".shard-0001-abc.faiss.building").write_bytes(b"y" * 10)
    assert collect_artifacts(collection.catalog, "default", "docs", dry_run=True) == (2, 1010)
    assert len(list(directory.iterdir())) == len(kept) + 2
    assert collect_artifacts(collection.catalog, "default", "docs") == (2, 1010)
    assert sorted(p.name for p in directory.iterdir()) == kept


def test_the_change_log_compacts_and_truncates_without_changing_its_effect(
    sandbox: Sandbox,
) -> None:
    log = ChangeLog(sandbox.catalog)
    vec = np.ones((1, 4), np.float32)
    for i in range(10):
        log.append("t", "c", UPSERT, np.array([i % 3]), vec * i)
    log.append("t", "c", DELETE, np.array([1]))
    before = log.read("t", "c", 0).net(4)
    assert log.compact("t", "c", log.head("t", "c")) == 8
    after = log.read("t", "c", 0).net(4)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(np.sort(a, axis=0), np.sort(b, axis=0))
    head = log.head("t", "c")
    assert log.truncate("t", "c", head) == 2  # the newest entry stays: the head does not move
    assert log.head("t", "c") == head
    log.append("t", "c", UPSERT, np.array([5]), vec)
    assert log.head("t", "c") == head + 1


def test_the_log_keeps_what_a_promotion_back_replays_and_overlays(collection: Sandbox) -> None:
    catalog = collection.catalog
    add_version(collection, "v0", "retained")
    log = ChangeLog(catalog)
    vec = np.ones((1, collection.dim), np.float32)
    for i in range(6):
        log.append("default", "docs", UPSERT, np.array([i]), vec * i)
    routing = catalog.get_routing("default", "docs")
    assert routing is not None
    assert routing.read_index is not None
    log.set_index_position(routing.read_index, log.head("default", "docs"))
    retained_index = catalog.indexes_of("default", "docs", "v0")[-1].id
    log.set_index_position(retained_index, log.head("default", "docs") - 4)
    RetentionLog(catalog).stopped_writing("default", "docs", "v0", log.head("default", "docs") - 1)
    # Not the stop position alone: served again, the retained index overlays from its own.
    assert log_floor(catalog, "default", "docs") == log.head("default", "docs") - 4
    prune_version(catalog, "default", "docs", "v0", "alice", reason="test", ignore_retention=True)
    assert log_floor(catalog, "default", "docs") == log.head("default", "docs")


async def test_a_retired_version_is_pruned_when_its_retention_ends(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(2000)
    log = ChangeLog(sandbox.catalog)
    # Writes logged after v1's index was built: kept while v1 could be promoted back (its index
    # overlays them), truncated once it is pruned.
    for i in range(20):
        log.append("default", "docs", UPSERT, np.array([i + 1]), np.ones((1, 16), np.float32))
    spec = sandbox.spec(retention={"retired_seconds": 4, "abandoned_seconds": 3600})
    source_dir = artifact_dir(sandbox.store, "default", "docs", "v1")
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        final = await mc.result(mid)
        assert final.phase == Phase.COMPLETED
        assert set(final.storage_bytes) == {"peak", "finalized"}
        retained = sandbox.catalog.find_version("default", "docs", "v1")
        assert retained is not None
        assert retained.state == "retained"
        record = RetentionLog(sandbox.catalog).get("default", "docs", "v1")
        assert record.left_as == "retired"
        assert record.written_until is not None
        assert count(sandbox, "v1") == 2000
        assert log.size("default", "docs")[0] == 20
        timer = client.get_workflow_handle(f"retention.{mid}.v1")
        deadline = time.monotonic() + 60
        while sandbox.catalog.entry_by_key("prune/default/docs/v1") is None:
            assert time.monotonic() < deadline, "the retention timer did not prune v1"
            await asyncio.sleep(0.5)
        pruned = await timer.result()
    assert pruned["action"] == "pruned"
    assert log.size("default", "docs")[0] == 1
    assert not source_dir.exists()
    entries = sandbox.catalog.entries(mid)
    kinds = [e.kind for e in entries]
    assert "retention.started" in kinds
    assert kinds[-2:] == ["version.pruned", "storage"]
    stages = [e.data["stage"] for e in entries if e.kind == "storage"]
    assert stages == ["peak", "finalized", "pruned"]
    peak, _, after = (e.data for e in entries if e.kind == "storage")
    assert after["source"]["records"] == 0
    assert after["target"]["records"] > 0
    assert peak["source"]["records"] > 0
    # The timer starts before "retention.started" is written, so measure from the entry the
    # migration wrote before it started the timer.
    started = kinds.index("retention.started")
    before_timer = datetime.fromisoformat(entries[started - 1].at)
    pruned_at = datetime.fromisoformat(entries[-2].at)
    assert pruned_at - before_timer >= timedelta(seconds=4)
