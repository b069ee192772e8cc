"""Reconcile: a target compared with its source record by record, repaired, and compared again.

On the real engines: the built-in store (SQLite), pgvector (PostgreSQL 18 with pgvector 0.8),
Qdrant's local mode and milvus-lite, each a target copied from a built-in source through the
copy's own path, then deliberately corrupted (a changed vector, a changed payload, a missing
id, an extra id).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker, vecmigrate
from tests.test_workflow import wait_for
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.changelog import DELETE, UPSERT, ChangeLog
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.diff import run_diff
from vecmigrate.data.backfill import (
    TargetView,
    open_source,
    settle_from_log,
    source_scope,
    target_scope,
)
from vecmigrate.data.datasets import clustered
from vecmigrate.model.gates import DiffCounts, ReconcileReport, ShardReconcile
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.records import FieldKind, PayloadField, RecordSchema, VectorField
from vecmigrate.model.spec import MigrationSpec, parse_spec
from vecmigrate.records.batch import Records, assemble
from vecmigrate.records.sharding import hash_key, plan_shards
from vecmigrate.stores import WHOLE, VectorStore, open_store
from vecmigrate.stores.milvus import close_clients as close_milvus
from vecmigrate.stores.qdrant import close_clients as close_qdrant
from vecmigrate.validation import reconcile
from vecmigrate.validation.reconcile import Reconciler, for_migration

DIM = 16
N = 600
# A payload over this many bytes is left out of the copy (the quarantine): one record has one.
CAP = 400
ENGINES = [
    "builtin",
    pytest.param("pgvector", marks=pytest.mark.integration),
    pytest.param("qdrant", marks=pytest.mark.integration),
    pytest.param("milvus", marks=pytest.mark.integration),
]


def ref(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest | None = None
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    if engine == "builtin":
        return {"kind": "builtin", "url": sqlite_url(tmp_path / f"t-{tag}.db")}
    if engine == "qdrant":
        return {"kind": "qdrant", "path": str(tmp_path / f"q-{tag}")}
    if engine == "milvus":
        return {"kind": "milvus", "uri": str(tmp_path / f"m-{tag}.db")}
    assert request is not None
    return {"kind": "pgvector", "url": postgres_database(request.getfixturevalue("postgres"))}


def spec_into(tmp_path: Path, target: dict[str, Any], **overrides: Any) -> MigrationSpec:
    return parse_spec(spec_data(tmp_path, target, **overrides))


def spec_data(tmp_path: Path, target: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    embedding = {"model_id": "m", "dimension": DIM, "metric": "l2"}
    flat = {"kind": "faiss_flat"}
    source = {"kind": "builtin", "url": sqlite_url(tmp_path / "source.db")}
    return {
        "id": f"rec-{uuid.uuid4().hex[:8]}",
        "collection": "c",
        "source": {"name": "v1", "store": source, "embedding": embedding, "index": flat},
        "target": {"name": "v2", "store": target, "embedding": embedding, "index": flat},
        "shards": {"by": "hash", "count": 3},
        "quarantine": {"max_payload_bytes": CAP},
        "batch_size": 128,
        **overrides,
    }


def records(over_cap: bool = True) -> Records:
    """Integer ids 1..N, a text and an integer payload field, one vector; record N has a text
    over the spec's payload cap unless ``over_cap`` is false."""
    schema = RecordSchema(
        vectors=(VectorField(name="embedding", dimension=DIM),),
        payload=(
            PayloadField(name="title", kind=FieldKind.TEXT),
            PayloadField(name="year", kind=FieldKind.INT),
        ),
    )
    ids = pa.array(np.arange(1, N + 1, dtype=np.int64))
    titles = [f"title {i}" for i in range(1, N + 1)]
    if over_cap:
        titles[-1] = "x" * (CAP * 2)
    payload = {
        "title": pa.array(titles),
        "year": pa.array([1990 + i % 35 for i in range(N)], pa.int64()),
    }
    out, faults = assemble(schema, ids, {"embedding": clustered(N, DIM, 8, seed=3)}, payload)
    assert not len(faults)
    return out


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    yield Catalog(sqlite_url(tmp_path / "catalog.db"))
    dispose_engines()
    close_milvus()
    close_qdrant()


def copied(catalog: Catalog, spec: MigrationSpec) -> tuple[VectorStore, VectorStore]:
    """The source filled and the target written through the copy's own path."""
    data = records()
    source = open_store(spec.source.store, source_scope(spec), schema=data.schema)
    source.write(data)
    target = open_store(spec.target.store, target_scope(spec), schema=data.schema)
    good, faults = TargetView.of(catalog, spec, target).records(source.fetch_records(data.ids))
    assert len(faults) == 1  # the record over the payload cap
    target.write(good)
    return source, target


def run(rec: Reconciler, spec: MigrationSpec, repair: bool) -> ReconcileReport:
    return ReconcileReport.of([rec.shard(s, repair) for s in plan_shards(spec.shards)])


def corrupt(source: VectorStore, target: VectorStore) -> None:
    """A changed vector (id 11), a changed payload (id 12), a missing id (13) and an extra id
    (10,000) in ``target``, the changed records made from ``source``'s (which may be ``target``
    itself: the region divergence tests corrupt one region's copy)."""
    got = source.fetch_records(pa.array([11, 12], pa.int64()))
    order = np.argsort(got.labels)
    got = got.take(order)
    vectors = got.vectors().copy()
    vectors[0] += 0.5
    target.write(got.slice(0, 1).with_vectors(vectors[:1]))
    payload = {"title": pa.array(["changed"]), "year": pa.array([1], pa.int64())}
    changed, _ = assemble(
        got.schema, pa.array([12], pa.int64()), {"embedding": vectors[1:]}, payload
    )
    target.write(changed)
    target.delete(pa.array([13], pa.int64()))
    extra, _ = assemble(
        got.schema,
        pa.array([10_000], pa.int64()),
        {"embedding": vectors[:1]},
        {"title": pa.array(["extra"]), "year": pa.array([2], pa.int64())},
    )
    target.write(extra)


@pytest.mark.parametrize("engine", ENGINES)
def test_reconcile_finds_and_repairs_a_corrupted_target_then_finds_nothing(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest, catalog: Catalog
) -> None:
    spec = spec_into(tmp_path, ref(engine, tmp_path, request))
    source, target = copied(catalog, spec)
    rec = for_migration(catalog, spec, source, target)
    clean = run(rec, spec, repair=True)
    # A faithful copy: nothing differs, and the record the quarantine left out is not missing.
    assert clean.found.total() == 0, clean.line()
    assert clean.passed
    assert clean.quarantined == 1
    assert clean.vectors_compared

    corrupt(source, target)
    report = run(rec, spec, repair=True)
    one = DiffCounts(missing=1, extra=1, vector=1, payload=1)
    assert report.found == one, report.line()
    assert report.repaired == one
    assert report.left == DiffCounts()
    assert report.passed
    assert all(r.again == DiffCounts() for r in report.differing)
    # A second run finds nothing, and the target holds the source's records again.
    again = run(rec, spec, repair=False)
    assert again.found == DiffCounts()
    assert again.passed
    assert target.count() == N - 1
    assert target.fetch_records(pa.array([10_000], pa.int64())).labels.size == 0


def under_writes(
    catalog: Catalog,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    log: ChangeLog,
    after: int,
) -> Reconciler:
    """A reconciler as the gate runs one while the router writes: the records the change log
    names after ``after`` are left out, and those the repair touched are settled from it."""
    return for_migration(
        catalog,
        spec,
        source,
        target,
        volatile=lambda: log.changed_ids(spec.tenant, spec.collection, after),
        settle=lambda ids: settle_from_log(catalog, spec, log, after, ids),
    )


def test_a_write_the_router_makes_during_the_repair_keeps_its_last_state(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repair reads the records it copies again from the source, then writes them to the
    target, and deletes the target's extra ones. The router, meanwhile, deletes one of those
    records and writes the extra one anew, in its own order (the change log, the source, the
    target). The repair's stale copies land last; the change log then gives both records their
    last write again: the deleted one stays deleted, the written one keeps its new vector."""
    spec = spec_into(tmp_path, ref("builtin", tmp_path), shards={"by": "hash", "count": 1})
    source, target = copied(catalog, spec)
    corrupt(source, target)  # 13 is missing from the target, 10,000 is an extra one
    log = ChangeLog(catalog)
    after = log.head(spec.tenant, spec.collection)
    newer = np.full((1, DIM), 7.0, np.float32)
    fetch = source.fetch_records

    def router_writes_meanwhile(ids: pa.Array) -> Records:
        got = fetch(ids)
        log.append(spec.tenant, spec.collection, DELETE, np.array([13]))
        for store in (source, target):
            store.delete(pa.array([13], pa.int64()))
        log.append(spec.tenant, spec.collection, UPSERT, np.array([10_000]), newer)
        for store in (source, target):
            store.upsert(np.array([10_000]), newer)
        return got

    monkeypatch.setattr(source, "fetch_records", router_writes_meanwhile)
    rec = under_writes(catalog, spec, source, target, log, after)
    report = run(rec, spec, repair=True)
    assert report.passed, report.line()
    assert report.found == DiffCounts(missing=1, extra=1, vector=1, payload=1)
    assert target.fetch_records(pa.array([13], pa.int64())).labels.size == 0
    written = target.fetch_records(pa.array([10_000], pa.int64()))
    np.testing.assert_array_equal(written.vectors(), newer)
    monkeypatch.undo()
    assert run(for_migration(catalog, spec, source, target), spec, repair=False).passed


@pytest.mark.parametrize("grace", [reconcile.WRITE_GRACE_SECONDS, 0.0])
def test_a_write_logged_before_the_pass_and_made_during_it_is_left_out(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, grace: float
) -> None:
    """The router has logged a new record, then makes it in the source and the target while
    the pass reads: after the source, before the target. The pass sees it in the target alone.
    Counted from the log's head at the start (no grace) it is an extra record, the repair
    deletes it from the target, and the second pass finds it missing; with the grace the pass
    leaves it out, as written during it, and the target keeps it."""
    spec = spec_into(tmp_path, ref("builtin", tmp_path), shards={"by": "hash", "count": 1})
    source, target = copied(catalog, spec)
    log = ChangeLog(catalog)
    vector = np.full((1, DIM), 3.0, np.float32)
    log.append(spec.tenant, spec.collection, UPSERT, np.array([20_000]), vector)
    after = reconcile.volatile_mark(log, spec.tenant, spec.collection, grace)
    scan, pending = source.iter_shard, [True]

    def written_after_the_source_is_read(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from scan(*args, **kwargs)
        while pending:  # the first pass only
            pending.pop()
            for store in (source, target):
                store.upsert(np.array([20_000]), vector)

    monkeypatch.setattr(source, "iter_shard", written_after_the_source_is_read)
    rec = under_writes(catalog, spec, source, target, log, after)
    result = rec.shard(plan_shards(spec.shards)[0])
    kept = target.fetch_records(pa.array([20_000], pa.int64())).labels.size
    if grace:
        assert result.found == DiffCounts()
        assert result.excluded == 1
        assert kept == 1
    else:  # what the pass did before: the record deleted, then found missing
        assert result.found == DiffCounts(extra=1)
        assert result.again == DiffCounts(missing=1)
        assert kept == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_vecmigrate_diff_leaves_out_a_write_in_flight_rather_than_repairing_it(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest, catalog: Catalog
) -> None:
    """An operator runs `vecmigrate diff --repair` while the application writes through the
    router. A record the change log names as written a moment ago, on the target but not yet
    on the source as the comparison reads them, is left out (the router is making it in both),
    not called extra and deleted; a corruption elsewhere is still repaired. On every engine a
    target can be: the in-flight record is told apart by the change log, not by the store."""
    target_ref = ref(engine, tmp_path, request)
    spec = spec_into(tmp_path, target_ref, shards={"by": "hash", "count": 1})
    _, target = copied(catalog, spec)
    target.upsert(np.array([13]), np.full((1, DIM), 5.0, np.float32))  # vector and payload lost
    vector = np.full((1, DIM), 3.0, np.float32)
    ChangeLog(catalog).append(spec.tenant, spec.collection, UPSERT, np.array([20_000]), vector)
    target.upsert(np.array([20_000]), vector)
    report, (shard,) = run_diff(catalog, spec, repair=True, state_path=tmp_path / "d.json")
    assert report.passed, report.line()
    assert shard.excluded == 1
    assert shard.found == DiffCounts(vector=1, payload=1)
    assert shard.again == DiffCounts()
    assert target.fetch_records(pa.array([20_000], pa.int64())).labels.size == 1


def test_without_repair_what_differs_is_left_and_the_verdict_fails(
    tmp_path: Path, catalog: Catalog
) -> None:
    spec = spec_into(tmp_path, ref("builtin", tmp_path))
    source, target = copied(catalog, spec)
    corrupt(source, target)
    report = run(for_migration(catalog, spec, source, target), spec, repair=False)
    assert report.found == DiffCounts(missing=1, extra=1, vector=1, payload=1)
    assert report.repaired == DiffCounts()
    assert not report.passed
    assert report.failures()
    assert "still differ" in report.failures()[0]
    assert report.left.total() == 4


def test_a_second_pass_that_still_finds_differences_fails_the_gate() -> None:
    found = DiffCounts(vector=2)
    shard = ShardReconcile(shard=4, found=found, repaired=found, again=DiffCounts(vector=1))
    report = ReconcileReport.of([ShardReconcile(shard=0), shard])
    assert not report.passed
    assert report.left == DiffCounts(vector=1)
    assert [r.shard for r in report.differing] == [4]
    assert "shards [4]" in report.failures()[0]


def test_a_new_model_compares_ids_and_payload_not_vectors(tmp_path: Path, catalog: Catalog) -> None:
    spec = spec_into(tmp_path, ref("builtin", tmp_path))
    source, target = copied(catalog, spec)
    corrupt(source, target)
    view = TargetView.of(catalog, spec, target)
    rec = Reconciler(source, target, view, compare_vectors=False, batch_size=128)
    report = run(rec, spec, repair=False)
    assert not report.vectors_compared
    assert report.found == DiffCounts(missing=1, extra=1, payload=1)
    assert "ids and payload" in report.line()


def test_the_throttle_holds_the_read_rate(tmp_path: Path, catalog: Catalog) -> None:
    spec = spec_into(tmp_path, ref("builtin", tmp_path))
    source, target = copied(catalog, spec)
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    rec = for_migration(
        catalog,
        spec,
        source,
        target,
        max_records_per_second=100.0,
        sleep=sleep,
        clock=lambda: now[0],
    )
    beats: list[dict[str, Any]] = []
    rec.on_progress = beats.append
    run(rec, spec, repair=True)
    # Both sides of every shard read: about 2 x N records at 100 a second.
    assert sum(slept) == pytest.approx((2 * N - 1) / 100.0, rel=0.05)
    assert beats
    assert {b["side"] for b in beats} == {"source", "target"}
    assert all(b["shard"] in (0, 1, 2) for b in beats)
    assert open_source(spec).count(WHOLE) == N


async def test_the_gate_repairs_writes_that_bypassed_the_router_before_the_index_build(
    client: Client, sandbox: Sandbox
) -> None:
    """While the copy runs, the target of a shard already copied (and indexed) is changed
    behind the router's back: a vector, a deleted record, a record the source never had. The
    reconcile gate before the index build finds and repairs each, builds that shard's index
    again, and the migration completes with the source's exact bytes in the target."""
    sandbox.seed(3000)
    spec = sandbox.spec(batch_size=100, max_vectors_per_second=900, max_parallel_shards=1)
    shards = plan_shards(spec.shards)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec)
        st = await wait_for(
            mc, mid, lambda s: any(p.state in ("copied", "indexing", "indexed") for p in s.shards)
        )
        assert st.phase == Phase.BACKFILLING
        done = next(p.shard for p in st.shards if p.state in ("copied", "indexing", "indexed"))
        target = open_store(spec.target.store, target_scope(spec))
        ids = np.arange(1, 3001, dtype=np.int64)
        keys = hash_key(ids)
        mine = ids[(keys >= shards[done].lo) & (keys < shards[done].hi)]
        changed, gone = int(mine[0]), int(mine[1])
        got_ids, got = target.fetch(np.array([changed]))
        target.upsert(got_ids, got + 1.0)
        target.delete(np.array([gone]))
        target.upsert(np.array([10**6]), got)
        await mc.set_throttle(mid, None, operator="test")
        final = await mc.result(mid)
        history = await mc.handle(mid).fetch_history()
    builds = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ].count("build_shard_index")
    assert final.phase == Phase.COMPLETED, final.error
    report = final.reconcile
    assert report is not None
    assert report.done
    assert report.passed
    assert report.found == DiffCounts(missing=1, extra=1, vector=1)
    assert report.repaired == report.found
    key = int(hash_key(np.array([10**6]))[0])
    extra_shard = next(s.index for s in shards if s.lo <= key < s.hi)
    assert [r.shard for r in report.differing] == sorted({done, extra_shard})
    assert report.shards == len(shards)
    entries = [e for e in sandbox.catalog.entries(mid) if e.kind == "reconcile"]
    assert len(entries) == 1
    assert entries[0].data["passed"] is True
    # The shard was indexed during the copy, before its repair: it was built again (the extra
    # record's shard too, when its copy had ended by then).
    assert len(shards) + 1 <= builds <= len(shards) + 2
    source = open_store(spec.source.store, source_scope(spec))
    assert target.checksum(WHOLE) == source.checksum(WHOLE)
    assert final.gates is not None
    assert final.gates.passed
    # The report prints the reconcile figures beside the gates, from the ledger.
    shown = vecmigrate("report", mid, "--catalog", sandbox.catalog.url)
    assert shown.returncode == 0, shown.stderr
    assert "reconcile (passed)" in shown.stdout


@pytest.mark.integration  # runs the vecmigrate program
def test_vecmigrate_diff_prints_the_counts_resumes_per_shard_and_repairs(
    tmp_path: Path, catalog: Catalog
) -> None:
    data = spec_data(tmp_path, ref("builtin", tmp_path))
    spec = parse_spec(data)
    source, target = copied(catalog, spec)
    corrupt(source, target)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    state = tmp_path / "diff-state.json"
    common = ["--catalog", sqlite_url(tmp_path / "catalog.db"), "--state", str(state)]

    found = vecmigrate("diff", str(path), *common)
    assert found.returncode == 1, found.stderr  # differences left: a non-zero exit, for CI
    assert "Traceback" not in found.stderr
    assert "missing 1" in found.stderr  # one line per shard as it is compared
    assert "reconcile (FAILED)" in found.stdout
    assert "total" in found.stdout
    done = json.loads(state.read_text())
    assert sorted(done["done"]) == ["0", "1", "2"]
    # A rerun compares nothing again: every shard was compared before.
    again = vecmigrate("diff", str(path), *common)
    assert again.returncode == 1
    assert again.stderr.count("compared before") == 3
    # A repair is another comparison: its state is not this one's.
    other = vecmigrate("diff", str(path), *common, "--repair")
    assert other.returncode == 2
    assert "another comparison's" in other.stderr
    assert "--restart" in other.stderr
    repaired = vecmigrate(
        "diff", str(path), *common, "--repair", "--restart", "--max-records-per-second", "100000"
    )
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "reconcile (passed)" in repaired.stdout
    clean = vecmigrate(
        "diff", str(path), *common[:2], "--state", str(tmp_path / "b.json"), "--json"
    )
    assert clean.returncode == 0, clean.stderr
    report = ReconcileReport.model_validate_json(clean.stdout)
    assert report.found == DiffCounts()
    assert report.quarantined == 1
    assert report.shards == 3
    # Bad input: a clear error before anything is read or written.
    for argv, message in (
        (["--source", "v1", "--target", "v1"], "both name 'v1'"),
        (["--target", "v9"], "no version 'v9'"),
        (["--max-records-per-second", "0"], "positive number"),
    ):
        bad = vecmigrate("diff", str(path), *common, "--restart", *argv)
        assert bad.returncode == 2, argv
        assert message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
