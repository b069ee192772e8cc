"""Streaming verification: the shard checks the copy computes as it writes equal a full read of
both versions, also after a copy killed mid-shard and resumed; the target is still checked
against the store (a lost or changed record fails the gate); ``gates.deep`` reads in full."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pytest
import yaml
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from tests.conftest import DIM, Sandbox, postgres_database, running_worker
from tests.test_activities import copy_killed_at_heartbeat, copy_killed_in_write, retry, task
from tests.test_backfill import poison
from vecmigrate import validation
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.catalog.journal import Journal
from vecmigrate.control.client import MigrationClient
from vecmigrate.data.backfill import open_source, open_target, prepare
from vecmigrate.data.datasets import clustered
from vecmigrate.data.quarantine import Quarantine
from vecmigrate.model.gates import ShardCheck, ShardProfile
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.records import IdKind, RecordSchema, VectorField
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import CopyShardInput, ShardRef, ValidateShardInput
from vecmigrate.records.batch import Faults, Records
from vecmigrate.records.ids import id_array, labels
from vecmigrate.records.screening import Limits, screen
from vecmigrate.records.vectors import merge_topk
from vecmigrate.stores.milvus import close_clients as close_milvus
from vecmigrate.stores.qdrant import close_clients as close_qdrant
from vecmigrate.testing.chaos import WorkerPool, streamed_problems
from vecmigrate.validation import stream
from vecmigrate.validation.gates import parity_verdicts

N = 3000

# Native indexes of the engines the adapters run in-process (qdrant-client's local mode,
# milvus-lite): both search exactly there.
ENGINE_INDEX: dict[str, dict[str, Any]] = {
    "qdrant": {"kind": "qdrant_hnsw", "m": 16, "ef_construct": 64, "ef": 64},
    "milvus": {"kind": "milvus_flat"},
}
# Every target but the built-in store on SQLite opens a real database engine.
TARGETS = [
    "builtin",
    *(pytest.param(k, marks=pytest.mark.integration) for k in ("pgvector", "qdrant", "milvus")),
]


def engine_store(sandbox: Sandbox, kind: str) -> dict[str, Any]:
    """A Qdrant local-mode directory or a milvus-lite file in the sandbox."""
    if kind == "qdrant":
        return {"kind": "qdrant", "path": str(sandbox.root / "qdrant")}
    return {"kind": "milvus", "uri": str(sandbox.root / "milvus.db")}


def close_engines() -> None:
    close_milvus()
    close_qdrant()


@pytest.fixture(params=TARGETS)
def target_version(sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The target version, v2, in each kind of store in turn."""
    kind = request.param
    index = {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
    if kind == "builtin":
        yield sandbox.version("v2", index).model_dump(mode="json")
    elif kind in ("qdrant", "milvus"):
        store = engine_store(sandbox, kind)
        yield sandbox.version("v2", ENGINE_INDEX[kind], store=store).model_dump(mode="json")
        close_engines()
    else:
        url = postgres_database(request.getfixturevalue("postgres"))
        store = {"kind": "pgvector", "url": url}
        yield sandbox.version("v2", index, store=store).model_dump(mode="json")


def _copied(
    sandbox: Sandbox, target: dict[str, Any] | None = None, **gates: Any
) -> tuple[MigrationActivities, MigrationSpec, list[ShardRef]]:
    """A migration of N records in 3 shards, batches of 100, prepared (not copied)."""
    sandbox.seed(N)
    over: dict[str, Any] = {"batch_size": 100, "gates": {"sample_queries": 60, **gates}}
    if target is not None:
        over["target"] = target
    spec = sandbox.spec(**over)
    acts = MigrationActivities(sandbox.catalog.url)
    shards = prepare(sandbox.catalog, spec, "t").shards
    return acts, spec, shards


def _copy(acts: MigrationActivities, spec: MigrationSpec, shard: ShardRef) -> None:
    result = ActivityEnvironment().run(
        acts.copy_shard, CopyShardInput(**task(acts, spec), shard=shard)
    )
    assert result.complete


def _all_copied(
    sandbox: Sandbox, target: dict[str, Any] | None = None, **gates: Any
) -> tuple[MigrationActivities, MigrationSpec, list[ShardRef]]:
    """As :func:`_copied`, with every shard then copied."""
    acts, spec, shards = _copied(sandbox, target, **gates)
    for s in shards:
        _copy(acts, spec, s)
    return acts, spec, shards


def _check(acts: MigrationActivities, spec: MigrationSpec, shard: ShardRef) -> ShardCheck:
    inp = ValidateShardInput(**task(acts, spec), shard=shard, round=0)
    return ActivityEnvironment().run(acts.validate_shard, inp)


def _same(streamed: ShardProfile, read: ShardProfile) -> None:
    """Equal, figure by figure (the norms' mean too: both sum each norm as an integer of 2**-32
    units, whatever the batch boundaries)."""
    assert streamed.model_dump() == read.model_dump()


def test_streamed_checks_equal_a_full_read_after_copies_killed_mid_shard(
    sandbox: Sandbox, target_version: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    acts, spec, shards = _copied(sandbox, target_version)
    poison(sandbox, spec, 17)  # one source record the target cannot hold: counted, not copied
    first, second, third = shards

    # Shard one: the worker "dies" at its fifth heartbeat, after the fifth batch was written
    # (the journal points at that batch's start: it is copied again on the resume).
    inp = CopyShardInput(**task(acts, spec), shard=first)
    copy_killed_at_heartbeat(acts, inp, 5)
    again = retry().run(acts.copy_shard, inp)
    assert again.complete
    assert again.recopied == 100

    # Shard two: the target store fails inside its seventh write (before it commits).
    inp = CopyShardInput(**task(acts, spec), shard=second)
    copy_killed_in_write(monkeypatch, type(open_target(spec)), acts, inp)
    assert ActivityEnvironment().run(acts.copy_shard, inp).recopied == 100
    _copy(acts, spec, third)

    checks = [_check(acts, spec, s) for s in shards]
    assert [c.basis for c in checks] == ["streamed"] * 3
    assert sum(c.source.quarantined.get("nonfinite", 0) for c in checks) == 1

    # The same checks from a full read of both versions, with the same queries' exact search.
    queries = stream.stored_queries(acts.journal, spec)
    assert queries is not None
    assert queries.source.shape[0] == 60
    source, target = open_source(spec), open_target(spec)
    for shard, check in zip(shards, checks, strict=True):
        knn = queries.exact_search(spec)
        read = validation.check_shard(spec, source, target, shard, truth=knn)
        _same(check.source, read.source)
        _same(check.target, read.target)
        (d, i), (rd, ri) = (
            acts.journal.truths(spec.migration_id, 0, queries.digest(), [shard.index])[0],  # type: ignore[index]
            knn.result(),
        )
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_allclose(d, rd, rtol=1e-5, atol=1e-5)
    # Merged, the shards' truths are the exact search of the whole target.
    parts = acts.journal.truths(spec.migration_id, 0, queries.digest(), [s.index for s in shards])
    assert parts is not None
    whole = target.search(queries.target, queries.ask, metric=str(spec.target.embedding.metric))
    np.testing.assert_array_equal(merge_topk(parts, queries.ask)[1], whole[1])
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))


def engine_collection(sandbox: Sandbox, kind: str, n: int = 1500) -> dict[str, Any]:
    """A collection made with the engine's own client, as users have them: in milvus-lite, text
    ids (a VARCHAR primary key) with a VARCHAR and an INT64 field and dynamic fields; in
    Qdrant's local mode (point ids are integers or UUIDs), UUID ids with a JSON payload, a key
    missing from some points and one no field names. The store reference that adopts it."""
    vectors = clustered(n, DIM, clusters=16, seed=5)
    rng = np.random.default_rng(5)
    if kind == "milvus":
        from pymilvus import DataType, MilvusClient

        uri = str(sandbox.root / "milvus.db")
        mc = MilvusClient(uri)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("doc_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field("title", DataType.VARCHAR, max_length=200)
        schema.add_field("year", DataType.INT64)
        index = mc.prepare_index_params()
        index.add_index("embedding", index_type="FLAT", metric_type="L2")
        mc.create_collection("articles", schema=schema, index_params=index)
        rows = [
            {"doc_id": f"doc-{i:05d}", "embedding": vectors[i].tolist(), "title": f"título {i}"}
            | {"year": 1990 + i % 30}
            | ({"note": {"n": i}} if i % 3 == 0 else {})  # a dynamic field, on some rows
            for i in range(n)
        ]
        mc.insert("articles", rows)
        mc.close()
        return {"kind": "milvus", "uri": uri, "collection": "articles"}
    from qdrant_client import QdrantClient, models

    path = str(sandbox.root / "qdrant")
    qc = QdrantClient(path=path)
    qc.create_collection(
        "articles", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.EUCLID)
    )
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    payloads = [
        {"title": f"title {i}", "tags": ["a", "b", "c"][: i % 4], "price": round(1.5 * i, 2)}
        | {"listed": f"2024-03-0{1 + i % 9}T10:00:00.000123Z", "sold": i % 2 == 0}
        | ({} if i % 5 == 0 else {"year": 1990 + i % 30})  # missing from some points
        | ({"rare key": {"n": i}} if i % 7 == 0 else {})  # no field: kept in the extra object
        for i in range(n)
    ]
    qc.upsert("articles", points=models.Batch(ids=ids, vectors=vectors.tolist(), payloads=payloads))
    qc.close()
    kinds = {"title": "text", "year": "int", "tags": "json", "price": "float"}
    kinds |= {"listed": "timestamp", "sold": "bool"}
    return {"kind": "qdrant", "path": path, "collection": "articles", "payload_kinds": kinds}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kind", "to"), [("qdrant", "qdrant"), ("milvus", "milvus"), ("qdrant", "milvus")]
)
def test_an_engine_collection_of_text_ids_and_payloads_streams_and_a_change_fails_the_gate(
    sandbox: Sandbox, kind: str, to: str, request: pytest.FixtureRequest
) -> None:
    """A collection the engine's own client made (text or UUID ids, payloads) migrated to a
    collection of vecmigrate's in the same engine or in Milvus: each shard's streamed check
    equals a full read of both versions (one copy killed mid-shard and resumed), the read-back
    sample keeps the ids as text; then a record deleted from the target and a sampled record
    changed in it fail the gate."""
    request.addfinalizer(close_engines)
    adopted = engine_collection(sandbox, kind)
    # The index the engine keeps (Qdrant's default HNSW, Milvus's FLAT), as inspect reports it.
    kept = {"kind": "qdrant_hnsw"} if kind == "qdrant" else {"kind": "milvus_flat"}
    source = sandbox.version("v1", kept, store=adopted)
    target = sandbox.version("v2", ENGINE_INDEX[to], store=engine_store(sandbox, to))
    spec = sandbox.spec(
        collection="articles",
        source=source.model_dump(mode="json"),
        target=target.model_dump(mode="json"),
        batch_size=100,
        gates={"sample_queries": 40},
    )
    acts = MigrationActivities(sandbox.catalog.url)
    shards = prepare(sandbox.catalog, spec, "t").shards
    # Shard 0's copy "dies" at its second heartbeat and resumes from the journal's cursor,
    # with the sample's text ids kept beside it.
    inp = CopyShardInput(**task(acts, spec), shard=shards[0])
    copy_killed_at_heartbeat(acts, inp, 2)
    assert retry().run(acts.copy_shard, inp).recopied == 100
    for s in shards[1:]:
        _copy(acts, spec, s)
    src, dst = open_source(spec), open_target(spec)
    assert dst.schema.id_kind == src.schema.id_kind != IdKind.INT
    assert [f.name for f in dst.schema.payload] == [f.name for f in src.schema.payload]

    checks = [_check(acts, spec, s) for s in shards]
    assert [c.basis for c in checks] == ["streamed"] * 3
    assert sum(c.target.count for c in checks) == 1500
    queries = stream.stored_queries(acts.journal, spec)
    assert queries is not None
    for shard, check in zip(shards, checks, strict=True):
        read = validation.check_shard(spec, src, dst, shard, truth=queries.exact_search(spec))
        _same(check.source, read.source)
        _same(check.target, read.target)
        assert check.target.payload_checksum == read.target.payload_checksum
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))

    # The sample's ids are kept as the store has them (text), and read back by them.
    row = acts.journal.stream(spec.migration_id, shards[2].index)
    assert row is not None
    listed = row.state["sample_ids"]
    assert listed is not None
    assert len(listed) == dst.count(shards[2])
    assert all(isinstance(i, str) for i in listed)

    # A record deleted from shard 1 of the target, a sampled record of shard 2 changed in it.
    victim = dst.scan(shards[1], None, 10).records.id_values()[3]
    assert dst.delete(id_array([victim], dst.schema.id_kind)) == 1
    found = dst.fetch_records(id_array([listed[5]], dst.schema.id_kind))
    assert len(found) == 1
    changed = found.with_vectors(found.vectors() + np.float32(0.25))
    dst.write(changed)

    checks = [_check(acts, spec, s) for s in shards]
    assert checks[0].basis == "streamed"
    assert checks[1].basis.startswith("read: the target holds"), checks[1].basis
    assert checks[2].basis.startswith("read: 1 of"), checks[2].basis
    assert "differ in the target" in checks[2].basis
    verdicts = {v.name: v for v in parity_verdicts(spec.gates, True, checks)}
    assert not verdicts["count_parity"].passed
    assert "shard 1" in verdicts["count_parity"].detail
    assert not verdicts["checksum_parity"].passed
    assert "1, 2" in verdicts["checksum_parity"].detail


def test_text_ids_a_qdrant_point_would_spell_otherwise_are_left_out() -> None:
    """Qdrant hands point ids back in canonical form: a number with a leading zero or a UUID in
    capitals or without hyphens would come back as another id, so the copy cannot hold it."""
    ids = ["7", "007", "0", "18446744073709551615", "18446744073709551616", str(uuid.UUID(int=9))]
    ids += [str(uuid.UUID(int=10)).upper(), uuid.UUID(int=11).hex, "doc-1"]
    schema = RecordSchema(id_kind=IdKind.STRING, vectors=(VectorField(name="v", dimension=2),))
    records = Records.build(schema, pa.array(ids), {"v": np.ones((len(ids), 2), np.float32)})
    kept, faults = screen(records, Limits(ids="point"))
    assert kept.id_values() == ["7", "0", "18446744073709551615", str(uuid.UUID(int=9))]
    assert sorted(faults.ids) == sorted(set(ids) - set(kept.id_values()))
    assert set(faults.reasons) == {"id_unstorable"}
    assert "canonical form" in faults.details[0]


@pytest.mark.integration
def test_text_ids_qdrant_would_rename_are_quarantined_and_the_stream_holds(
    sandbox: Sandbox, request: pytest.FixtureRequest
) -> None:
    """Text ids from milvus-lite to Qdrant: numbers with a leading zero and UUIDs in capitals
    used to be written under Qdrant's own spelling ("000097" came back as "97"), which the copy
    counted as written with the source's id: the streamed checks passed whenever no renamed
    record was in the read-back sample, where a full read found other ids. They are now left
    out (``id_unstorable``) and the streamed checks, equal to a full read, pass."""
    from pymilvus import DataType, MilvusClient

    request.addfinalizer(close_engines)
    n = 4000
    rng = np.random.default_rng(3)
    ids = [
        f"{i:06d}"
        if i % 97 == 0
        else str(uuid.UUID(bytes=rng.bytes(16))).upper()
        if i % 89 == 0
        else str(i)
        for i in range(n)
    ]
    # One more, ranked last for the read-back sample: only the copy's screen can catch it.
    padded = [f"{i:06d}" for i in range(n)]
    last = int(np.argmax(stream._priority(labels(pa.array(padded), IdKind.STRING))))
    ids[last] = padded[last]
    renamed = {i for i in ids if not i.isdigit() or i.startswith("0")} - {"0"}
    vectors = clustered(n, DIM, clusters=16, seed=5)
    uri = str(sandbox.root / "milvus.db")
    mc = MilvusClient(uri)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("doc_id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    index = mc.prepare_index_params()
    index.add_index("embedding", index_type="FLAT", metric_type="L2")
    mc.create_collection("articles", schema=schema, index_params=index)
    mc.insert("articles", [{"doc_id": ids[i], "embedding": vectors[i].tolist()} for i in range(n)])
    mc.close()
    adopted = {"kind": "milvus", "uri": uri, "collection": "articles"}
    spec = sandbox.spec(
        collection="articles",
        source=sandbox.version("v1", {"kind": "milvus_flat"}, store=adopted).model_dump(
            mode="json"
        ),
        target=sandbox.version(
            "v2", ENGINE_INDEX["qdrant"], store=engine_store(sandbox, "qdrant")
        ).model_dump(mode="json"),
        batch_size=200,
        gates={"sample_queries": 40},
        quarantine={"max_records": None},
    )
    acts = MigrationActivities(sandbox.catalog.url)
    shards = prepare(sandbox.catalog, spec, "t").shards
    for s in shards:
        _copy(acts, spec, s)
    report = Quarantine(sandbox.catalog).report(spec.migration_id, listed=n)
    assert report.counts == {"id_unstorable": len(renamed)}
    assert set(report.ids["id_unstorable"]) == renamed

    src, dst = open_source(spec), open_target(spec)
    checks = [_check(acts, spec, s) for s in shards]
    assert [c.basis for c in checks] == ["streamed"] * 3
    reads = [validation.check_shard(spec, src, dst, s) for s in shards]
    for check, read in zip(checks, reads, strict=True):
        _same(check.target, read.target)
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))
    assert all(v.passed for v in parity_verdicts(spec.gates, True, reads))
    # Every record the target holds has its source id.
    held = set(dst.fetch_records(id_array(sorted(set(ids) - renamed), IdKind.STRING)).id_values())
    assert held == set(ids) - renamed
    assert dst.count() == n - len(renamed)


def test_a_target_record_lost_after_the_copy_fails_the_gate(
    sandbox: Sandbox, target_version: dict[str, Any]
) -> None:
    acts, spec, shards = _all_copied(sandbox, target_version)
    shard = shards[1]
    victim = int(next(iter(open_target(spec).iter_shard(shard, 10))).ids[3])
    open_target(spec).delete(np.array([victim], np.int64))

    checks = [_check(acts, spec, s) for s in shards]
    assert checks[0].basis == checks[2].basis == "streamed"
    assert checks[1].basis.startswith("read: the target holds")
    verdicts = {v.name: v for v in parity_verdicts(spec.gates, True, checks)}
    assert not verdicts["count_parity"].passed
    assert "shard 1" in verdicts["count_parity"].detail
    assert not verdicts["checksum_parity"].passed


def test_a_sampled_target_record_changed_after_the_copy_fails_the_gate(
    sandbox: Sandbox, target_version: dict[str, Any]
) -> None:
    acts, spec, shards = _all_copied(sandbox, target_version)
    shard = shards[2]
    row = acts.journal.stream(spec.migration_id, shard.index)
    assert row is not None
    # Every record of a shard this small is in the read-back sample (1,024 a shard).
    sampled = np.frombuffer(row.sample or b"", np.int64)[: open_target(spec).count(shard)]
    assert len(row.sample or b"") == 16 * open_target(spec).count(shard)
    victim = int(sampled[5])
    target = open_target(spec)
    _, vec = target.fetch(np.array([victim], np.int64))
    target.upsert(np.array([victim], np.int64), vec + np.float32(0.25))

    checks = [_check(acts, spec, s) for s in shards]
    assert checks[2].basis.startswith("read: 1 of")
    assert "differ in the target" in checks[2].basis
    verdicts = {v.name: v for v in parity_verdicts(spec.gates, True, checks)}
    assert verdicts["count_parity"].passed
    assert not verdicts["checksum_parity"].passed
    assert "2" in verdicts["checksum_parity"].detail


def test_a_change_during_the_migration_is_left_out_of_the_streamed_figures(
    sandbox: Sandbox,
) -> None:
    """A record written since the migration began (the change log names it) is left out of
    both profiles, as the full read leaves it out: by the share the copy counted for it, so
    its shard keeps the stream; a copy that kept no file of what it counted (one from before
    this version) sends the shard to the full read (see tests/test_streamed_router.py)."""
    from vecmigrate.catalog.changelog import ChangeLog
    from vecmigrate.catalog.journal import StreamRow

    acts, spec, shards = _copied(sandbox)
    log = ChangeLog(sandbox.catalog)
    after = log.head(spec.tenant, spec.collection)
    for s in shards:
        _copy(acts, spec, s)
    source, target = open_source(spec), open_target(spec)
    victim = int(next(iter(source.iter_shard(shards[0], 10))).ids[0])
    new = np.full((1, spec.source.embedding.dimension), 5.0, np.float32)
    # A write through the router: both versions and the change log.
    log.append(spec.tenant, spec.collection, "upsert", np.array([victim], np.int64), new)
    source.upsert(np.array([victim], np.int64), new)
    target.upsert(np.array([victim], np.int64), new)

    def check(shard: ShardRef) -> ShardCheck:
        inp = ValidateShardInput(**task(acts, spec), shard=shard, round=0, volatile_after=after)
        return ActivityEnvironment().run(acts.validate_shard, inp)

    checks = [check(s) for s in shards]
    assert [c.basis for c in checks] == ["streamed"] * 3
    assert [c.excluded for c in checks] == [1, 0, 0]
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))
    read = validation.check_shard(
        spec, source, target, shards[0], lambda: np.array([victim], np.int64)
    )
    _same(checks[0].source, read.source)
    _same(checks[0].target, read.target)

    row = acts.journal.stream(spec.migration_id, shards[0].index)
    assert row is not None
    old = StreamRow({**row.state, "counted": None}, row.distances, row.ids, row.sample)
    acts.journal.set_stream(spec.migration_id, shards[0].index, old)
    again = check(shards[0])
    assert again.basis == (
        "read: 1 records of the shard changed during the migration; the copy kept no file of "
        "what it counted"
    )
    assert again.excluded == 1
    _same(again.source, read.source)


def test_deep_reads_both_versions_in_full_and_the_copy_keeps_no_stream(sandbox: Sandbox) -> None:
    acts, spec, shards = _all_copied(sandbox, deep=True)
    assert acts.journal.stream(spec.migration_id, shards[0].index) is None
    assert stream.stored_queries(acts.journal, spec) is None
    checks = [_check(acts, spec, s) for s in shards]
    assert {c.basis for c in checks} == {"read: gates.deep asks for the full re-read"}
    assert all(v.passed for v in parity_verdicts(spec.gates, True, checks))


def test_a_copy_from_before_streaming_is_read_in_full(sandbox: Sandbox) -> None:
    """A shard copied without a stream (a copy that began before this version) is checked by
    the full read, and says so."""
    acts, spec, shards = _all_copied(sandbox)
    acts.journal.drop_stream(spec.migration_id, shards[0].index)
    check = _check(acts, spec, shards[0])
    assert check.basis == "read: the copy kept no streamed figures for this shard"
    assert check.source.count == check.target.count > 0


@pytest.mark.parametrize("deep", [False, True])
async def test_a_migration_through_the_workflow_validates_from_the_stream_unless_deep(
    client: Client, sandbox: Sandbox, deep: bool
) -> None:
    sandbox.seed(N)
    spec = sandbox.spec(gates={"deep": deep})
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        final = await mc.result(await mc.start(spec))
    assert final.phase == Phase.COMPLETED, final.error
    journal = Journal(sandbox.catalog)
    checks = [
        ShardCheck.model_validate(c)
        for c in journal.outcomes(spec.migration_id, "check_result").values()
    ]
    assert len(checks) == 3
    assert final.reconcile is not None
    assert final.reconcile.passed
    assert final.reconcile.shards == 3
    if deep:
        assert {c.basis for c in checks} == {"read: gates.deep asks for the full re-read"}
        assert stream.stored_queries(journal, spec) is None
        assert final.reconcile.streamed == 0
    else:
        assert {c.basis for c in checks} == {"streamed"}
        assert final.reconcile.streamed == 3  # the reconcile gate read neither version
        stored = stream.stored_queries(journal, spec)
        assert stored is not None
        assert final.gates is not None
        assert final.gates.queries == stored.source.shape[0]


async def test_a_worker_killed_mid_copy_resumes_the_stream_where_its_cursor_is(
    client: Client, sandbox: Sandbox, tmp_path: Path
) -> None:
    """A real worker process killed with SIGKILL in the middle of a shard's copy: the retry on
    a new worker goes on from the journal's cursor with the figures kept beside it, and they
    equal a full read of both versions."""
    sandbox.seed(12_000)
    spec = sandbox.spec(
        shards={"count": 2},
        batch_size=250,
        max_vectors_per_second=3000.0,
        heartbeat_seconds=2.0,
    )
    journal = Journal(sandbox.catalog)
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "workers"
    home.mkdir()
    pool = WorkerPool(home, client.service_client.config.target_host, queue, sandbox.catalog.url, 1)
    try:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec)
        deadline = time.monotonic() + 120
        while not any(
            s.result is None and s.copied >= 1000
            for s in journal.copy_states(spec.migration_id).values()
        ):
            assert time.monotonic() < deadline, "no copy under way"
            await asyncio.sleep(0.05)
        pool.kill_one(random.Random(0))  # the only worker, mid-copy; a new one takes over
        final = await mc.result(mid)
    finally:
        pool.stop()
    assert final.phase == Phase.COMPLETED, final.error
    states = journal.copy_states(spec.migration_id).values()
    assert any(s.attempts > 1 and s.copied > 0 for s in states)
    streamed, problems = streamed_problems(sandbox.catalog, spec)
    assert problems == []
    assert streamed == 2


def test_a_source_record_removed_behind_the_log_and_a_later_round_read_in_full(
    sandbox: Sandbox,
) -> None:
    acts, spec, shards = _all_copied(sandbox)
    assert _check(acts, spec, shards[0]).basis == "streamed"
    # A validation round after a failed gate reads in full, whatever the stream holds.
    inp = ValidateShardInput(**task(acts, spec), shard=shards[0], round=1)
    again = ActivityEnvironment().run(acts.validate_shard, inp)
    assert again.basis == "read: a validation round after a failed gate reads in full"
    # A source record deleted with no change logged: the source's count gives it away.
    victim = int(next(iter(open_source(spec).iter_shard(shards[0], 10))).ids[0])
    open_source(spec).delete(np.array([victim], np.int64))
    check = _check(acts, spec, shards[0])
    assert check.basis.startswith("read: the source holds")
    assert check.source.count == check.target.count - 1


async def test_an_online_migration_with_writes_keeps_the_shards_they_touched_streamed(
    client: Client, sandbox: Sandbox
) -> None:
    """Writes through the gateway during the whole window: the migration passes its gates, and
    every shard's check is streamed, the shards the writes touched too, the written records
    left out of the figures (``excluded``), as the full read always left them out."""
    from tests.test_online import drill_load, online_spec
    from vecmigrate.serving.gateway import Gateway
    from vecmigrate.testing.drill import run_drill
    from vecmigrate.testing.loadgen import verify

    sandbox.seed(6000)
    spec = online_spec(sandbox, shards={"count": 4})
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.5).start()
    queries = open_source(spec).sample(100, seed=3)[1]
    phase = {"now": "BEFORE"}
    load = drill_load(gateway, queries, phase)
    try:
        load.start()
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            final = await run_drill(mc, spec, lambda p: phase.update(now=p), operator="alice")
    finally:
        load.stop()
        gateway.stop()
    assert final.phase == Phase.COMPLETED, final.error
    assert verify(load.states, open_target(spec)).ok
    checks = [
        ShardCheck.model_validate(c)
        for c in Journal(sandbox.catalog).outcomes(spec.migration_id, "check_result").values()
    ]
    assert len(checks) == 4
    print({c.shard: (c.basis, c.excluded) for c in checks})
    touched = [c for c in checks if c.excluded]
    assert touched, "the writes touched no shard: the test measured nothing online"
    # The records written through the router are left out of the streamed figures by what the
    # copy counted for them: no shard is read in full for them.
    assert [c.basis for c in checks] == ["streamed"] * 4
    # Nor by the reconcile gate: it reads the records written during the migration from both
    # versions instead, and they agree.
    assert final.reconcile is not None
    assert final.reconcile.passed
    assert final.reconcile.streamed == 4, final.reconcile


async def test_vecmigrate_start_deep_reads_the_shards_in_full(
    client: Client, sandbox: Sandbox, tmp_path: Path
) -> None:
    """``vecmigrate start --deep SPEC``: the migration it starts keeps a spec with ``gates.deep``
    (the file says nothing of it) and its shard checks read both versions in full."""
    from tests.test_cli_matrix import run_cli

    sandbox.seed(N)
    spec = sandbox.spec()
    assert not spec.gates.deep
    path = tmp_path / "spec.yaml"
    written = spec.model_dump(mode="json")
    del written["gates"]["deep"]
    path.write_text(yaml.safe_dump(written))
    address = str(client.service_client.config.target_host)
    async with running_worker(client, sandbox) as queue:
        common = ["--catalog", sandbox.catalog.url, "--address", address, "--task-queue", queue]
        code, out, err = await asyncio.to_thread(
            run_cli, "start", str(path), "--deep", "--operator", "ci", *common
        )
        assert code == 0, err + out
        mid = out.strip()
        assert mid == spec.migration_id
        final = await MigrationClient(client, queue).result(mid)
    assert final.phase == Phase.COMPLETED, final.error
    stored = MigrationSpec.model_validate(sandbox.catalog.get_migration(mid)["spec"])
    assert stored.gates.deep
    assert stored.spec_hash() != spec.spec_hash()
    checks = [
        ShardCheck.model_validate(c)
        for c in Journal(sandbox.catalog).outcomes(mid, "check_result").values()
    ]
    assert len(checks) == 3
    assert {c.basis for c in checks} == {"read: gates.deep asks for the full re-read"}
    assert sum(c.target.count for c in checks) == N
    assert acts_kept_no_stream(sandbox, stored)


def acts_kept_no_stream(sandbox: Sandbox, spec: MigrationSpec) -> bool:
    """Whether the copy kept neither a streamed shard state nor a query sample (deep)."""
    journal = Journal(sandbox.catalog)
    shards = range(spec.shards.count)
    none = all(journal.stream(spec.migration_id, i) is None for i in shards)
    return none and stream.stored_queries(journal, spec) is None


def test_a_batch_folded_in_while_the_target_writes_gives_the_same_figures(
    sandbox: Sandbox,
) -> None:
    """The copy starts folding in each batch (profiles, exact search, read-back sample) before
    the target's write and waits for it when the figures are read (persisted with the next
    cursor), or when the next batch's fold starts: the figures are byte for byte those of the
    fold run in ``add``; a batch added that is not the one folded in ahead is refused."""
    acts, spec, shards = _all_copied(sandbox)
    queries = stream.stored_queries(acts.journal, spec)
    assert queries is not None
    target = open_target(spec)
    shard = shards[0]
    batches = [b.records for b in target.iter_shard(shard, 100)]
    assert len(batches) > 3
    ahead, inline, chained = (stream.ShardStream(spec, shard, queries) for _ in range(3))
    for records in batches:
        ahead.before_write(records, Faults(), records)
        ahead.add(records, Faults(), records)
        inline.add(records, Faults(), records)
        assert ahead.row() == inline.row()
        chained.before_write(records, Faults(), records)  # the fold before waited for here
        chained.add(records, Faults(), records)
    assert chained.row() == inline.row()
    truth = ahead.truth()
    assert truth is not None
    assert (truth[1] != -1).all()  # every query found its neighbours
    ahead.before_write(batches[0], Faults(), batches[0])
    with pytest.raises(ValueError, match="another batch"):
        ahead.add(batches[1], Faults(), batches[1])


def test_the_search_beside_the_write_runs_on_the_copys_share_of_the_cores() -> None:
    """The copy activity sets its share of FAISS's threads on its own thread (libgomp keeps the
    count per thread); the batch's exact search, run on a thread of its own while the target
    writes, takes the same count instead of the process's default of every core."""
    before = faiss.omp_get_max_threads()
    seen: list[int] = []
    try:
        for share in (1, 3):
            faiss.omp_set_num_threads(share)
            stream._in_thread(lambda: seen.append(faiss.omp_get_max_threads())).result(10)
    finally:
        faiss.omp_set_num_threads(before)
    assert seen == [1, 3]
