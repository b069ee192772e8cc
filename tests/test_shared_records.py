"""A migration that changes the index alone (``records: shared``): the target version reads the
source's records where they are. Nothing is copied, a write is made once, and dropping a version
never drops records another one reads. The store on real SQLite and PostgreSQL; the migrations
on a real Temporal dev server with real FAISS and hnswlib."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sqlalchemy import text
from temporalio.client import Client, WorkflowHistory

from tests.conftest import Sandbox, running_worker, shadow_all, vecmigrate
from tests.index_kinds import every_artifact_kind
from tests.test_validation import copy_and_build, validate
from tests.test_workflow import wait_for
from vecmigrate.catalog.engines import engine_for
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.data.backfill import open_source, open_target, prepare
from vecmigrate.data.footprint import footprint, storage_estimate
from vecmigrate.data.retention import prune_version
from vecmigrate.errors import NotFoundError, PreconditionError, SpecError
from vecmigrate.model.lifecycle import Phase, builds_while_copying
from vecmigrate.model.spec import PgvectorStoreRef, parse_spec
from vecmigrate.serving.router import Router
from vecmigrate.stores import Scope, share_store
from vecmigrate.stores.builtin import BuiltinStore, drop_namespace, other_readers

DIM = 8


def _rows(url: str) -> tuple[int, int]:
    """Rows of the built-in store's records and namespaces tables."""
    with engine_for(url).connect() as conn:
        records = conn.execute(text("SELECT count(*) FROM vm_vectors")).scalar_one()
        spaces = conn.execute(text("SELECT count(*) FROM vm_namespaces")).scalar_one()
    return int(records), int(spaces)


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_versions_that_share_records_read_and_write_one_set_and_drop_it_with_the_last(
    sql_url: str,
) -> None:
    v1 = BuiltinStore.open(sql_url, Scope("t", "c", "v1"), DIM)
    v1.upsert(np.arange(1, 101), _vectors(100))
    v2 = BuiltinStore.share(sql_url, Scope("t", "c", "v2"), Scope("t", "c", "v1"))
    v3 = BuiltinStore.share(sql_url, Scope("t", "c", "v3"), Scope("t", "c", "v2"))  # a chain
    assert v2.count() == v3.count() == 100
    assert v1.records_at == v2.records_at == v3.records_at
    assert _rows(sql_url) == (100, 3)  # nothing copied
    # Sharing again is the same namespace; a write through one is in the others.
    assert BuiltinStore.share(sql_url, Scope("t", "c", "v2"), Scope("t", "c", "v1")).ns == v1.ns
    v2.upsert(np.array([101]), _vectors(1, seed=1))
    v1.delete(np.array([1]))
    assert v1.fetch(np.array([101]))[0].tolist() == [101]
    assert v3.fetch(np.array([1]))[0].tolist() == []
    assert _rows(sql_url) == (100, 3)
    # A version with records of its own does not become a reader of another's.
    BuiltinStore.open(sql_url, Scope("t", "c", "own"), DIM).upsert(np.array([7]), _vectors(1))
    with pytest.raises(PreconditionError, match="holds records of its own"):
        BuiltinStore.share(sql_url, Scope("t", "c", "own"), Scope("t", "c", "v1"))
    with pytest.raises(NotFoundError):
        BuiltinStore.share(sql_url, Scope("t", "c", "v9"), Scope("t", "c", "nope"))
    assert other_readers(v1) == other_readers(v2) == 2

    # The owner dropped first: its records stay for the others, its name is not free again.
    assert drop_namespace(sql_url, Scope("t", "c", "v1")) == 0
    with pytest.raises(NotFoundError, match="was dropped"):
        BuiltinStore.open(sql_url, Scope("t", "c", "v1"))
    with pytest.raises(PreconditionError, match="name another version"):
        BuiltinStore.open(sql_url, Scope("t", "c", "v1"), DIM)
    with pytest.raises(PreconditionError, match="was dropped"):
        BuiltinStore.share(sql_url, Scope("t", "c", "v1"), Scope("t", "c", "v2"))
    assert v2.count() == 100
    assert other_readers(v2) == 1
    assert drop_namespace(sql_url, Scope("t", "c", "v2")) == 0
    assert v3.count() == 100
    assert other_readers(v3) == 0
    # The last reader takes the records, and the retired owner's row, with it.
    assert drop_namespace(sql_url, Scope("t", "c", "v3")) == 100
    assert _rows(sql_url) == (1, 1)  # the other version's own record and namespace
    assert drop_namespace(sql_url, Scope("t", "c", "v3")) == 0  # idempotent


def test_a_spec_shares_records_only_where_the_index_alone_changes(sandbox: Sandbox) -> None:
    base = sandbox.spec().model_dump(mode="json")
    spec = parse_spec({**base, "records": "shared"})
    assert spec.records == "shared"
    assert parse_spec(base).records == "copy"
    other_store = {"kind": "builtin", "url": "sqlite:///" + str(sandbox.root / "other.db")}
    pg = {"kind": "pgvector", "url": "postgresql+psycopg://db/app"}
    refused = {
        "is pgvector, which keeps each version's records apart": {"store": pg},
        "target.store differs from source.store": {"store": other_store},
        "target.embedding differs from source.embedding": {
            "embedding": {**base["target"]["embedding"], "metric": "ip"}
        },
    }
    for reason, target in refused.items():
        with pytest.raises(SpecError, match=reason):
            parse_spec({**base, "records": "shared", "target": {**base["target"], **target}})
    with pytest.raises(SpecError, match="leaves records out"):
        parse_spec(
            {
                **base,
                "records": "shared",
                "quarantine": {**base["quarantine"], "max_payload_bytes": 100},
            }
        )
    with pytest.raises(SpecError, match="a regional migration copies each region's records"):
        parse_spec({**base, "records": "shared", "region": "eu"})
    # Other stores refuse at the store too, for a caller that skips the spec.
    ref = PgvectorStoreRef(url="postgresql+psycopg://db/app")
    with pytest.raises(PreconditionError, match="records: shared needs the built-in store"):
        share_store(ref, Scope("t", "c", "v2"), Scope("t", "c", "v1"))


class Traffic:
    """Searches and writes through a router while a migration runs: new records, updates and
    deletes, each remembered as the state it leaves."""

    def __init__(self, sandbox: Sandbox, vectors: np.ndarray) -> None:
        self.router = Router(sandbox.catalog, refresh_seconds=0.2)
        self.vectors = vectors
        self.expected: dict[int, np.ndarray | None] = {}
        self.searches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(30)
        self.router.close()

    def _run(self) -> None:
        rng = np.random.default_rng(5)
        step = 0
        try:
            while not self._stop.is_set():
                q = self.vectors[rng.integers(len(self.vectors), size=1)]
                self.router.search("default", "docs", q, 5)
                self.searches += 1
                if step % 3 == 0:
                    new = 100_000 + step
                    vec = rng.standard_normal((1, self.vectors.shape[1])).astype(np.float32)
                    self.router.upsert("default", "docs", np.array([new]), vec)
                    self.expected[new] = vec[0]
                elif step % 3 == 1:
                    old = int(rng.integers(1, len(self.vectors) + 1))
                    vec = rng.standard_normal((1, self.vectors.shape[1])).astype(np.float32)
                    self.router.upsert("default", "docs", np.array([old]), vec)
                    self.expected[old] = vec[0]
                else:
                    gone = int(rng.integers(1, len(self.vectors) + 1))
                    self.router.delete("default", "docs", np.array([gone]))
                    self.expected[gone] = None
                step += 1
                time.sleep(0.02)
        except BaseException as exc:
            self.error = exc


def _order(history: WorkflowHistory) -> list[str]:
    """The shard copies' and builds' activities scheduled and completed, in history order."""
    named: dict[int, str] = {}
    seen: list[str] = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            if name in ("copy_shard", "build_shard_index"):
                named[event.event_id] = name
                seen.append(f"scheduled {name}")
        elif event.HasField("activity_task_completed_event_attributes"):
            done = named.get(event.activity_task_completed_event_attributes.scheduled_event_id)
            if done is not None:
                seen.append(f"completed {done}")
    return seen


def _shared_spec(sandbox: Sandbox, strategy: str) -> Any:
    over: dict[str, Any] = {"strategy": strategy, "records": "shared"}
    if strategy in ("online", "shadow_only"):
        over["online"] = {
            "settle_seconds": 0.5,
            "shadow": shadow_all(seconds=1, min_samples=5),
            "ramp": {"steps": [50], "step_seconds": 0.5},
        }
    return sandbox.spec(**over)


@pytest.mark.parametrize("strategy", ["blue_green", "online", "offline", "shadow_only"])
async def test_an_index_only_migration_copies_nothing_and_loses_no_write(
    client: Client, sandbox: Sandbox, strategy: str
) -> None:
    vectors = sandbox.seed(3000)
    spec = _shared_spec(sandbox, strategy)
    url = sandbox.store.url
    assert url is not None
    assert storage_estimate(sandbox.catalog, spec, 3000).target.records == 0
    writes = strategy != "offline"  # an offline migration holds writes
    traffic = Traffic(sandbox, vectors)
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        with traffic if writes else contextlib.nullcontext():
            mid = await mc.start(spec)
            final = await mc.result(mid, timeout=300)
        history = await mc.handle(mid).fetch_history()
    assert traffic.error is None, traffic.error
    assert final.phase == Phase.COMPLETED, final.error
    if builds_while_copying(spec):
        # The first shard's build starts beside its pass, not after it.
        assert _order(history)[:2] == ["scheduled copy_shard", "scheduled build_shard_index"]
    assert final.gates is not None
    assert final.gates.passed
    # Nothing was copied: one set of records, read by both versions.
    read = sum(s.copied for s in final.shards)  # every record read and checked
    if writes:  # written to while the copy's pass reads
        assert 3000 - len(traffic.expected) <= read <= 3000 + len(traffic.expected)
    else:
        assert read == 3000
    source, target = open_source(spec), open_target(spec)
    assert source.records_at == target.records_at  # type: ignore[attr-defined]
    records, spaces = _rows(url)
    assert spaces == 2
    assert (
        records
        == target.count()
        == 3000
        + sum(1 for k, v in traffic.expected.items() if k >= 100_000 and v is not None)
        - sum(1 for k, v in traffic.expected.items() if k <= 3000 and v is None)
    )
    if writes:
        assert traffic.searches > 10
        assert len(traffic.expected) > 10
    # Every write's last state is in the records both versions read.
    for key, vec in traffic.expected.items():
        found, got = target.fetch(np.array([key]))
        if vec is None:
            assert found.tolist() == [], key
        else:
            assert found.tolist() == [key], key
            np.testing.assert_array_equal(got[0], vec)
    routing = sandbox.catalog.get_routing("default", "docs")
    assert routing is not None
    if strategy == "shadow_only":
        assert routing.read_version == "v1"
        return
    assert routing.read_version == "v2"
    # The new version serves, and a record written now is found through it and in the old.
    router = Router(sandbox.catalog, refresh_seconds=0)
    try:
        probe = vectors[10:11] * 0 + 50.0
        router.upsert("default", "docs", np.array([777_777]), probe)
        router.settle("default", "docs")
        assert router.search("default", "docs", probe, 1).ids[0, 0] == 777_777
    finally:
        router.close()
    assert source.fetch(np.array([777_777]))[0].tolist() == [777_777]
    # The old version goes: the records stay for the new one, and its footprint says whose.
    assert footprint(spec.target.store, Scope("default", "docs", "v1"), sandbox.dim).records == 0
    pruned = prune_version(
        sandbox.catalog, "default", "docs", "v1", "test", reason="test", ignore_retention=True
    )
    assert pruned.action == "pruned", pruned
    assert target.count() == records + 1
    assert footprint(spec.target.store, Scope("default", "docs", "v2"), sandbox.dim).records > 0


async def test_a_rollback_after_the_cut_over_keeps_every_write_in_the_old_version(
    client: Client, sandbox: Sandbox
) -> None:
    vectors = sandbox.seed(2000)
    spec = sandbox.spec(records="shared", cutover={"mode": "automatic", "bake_seconds": 30})
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec)
        await wait_for(mc, mid, lambda st: st.phase == Phase.BAKING, timeout=120)
        router = Router(sandbox.catalog, refresh_seconds=0)
        try:
            new = vectors[:1] + 100.0
            router.upsert("default", "docs", np.array([5_000]), new)  # written to v2 (and v1)
            router.delete("default", "docs", np.array([3]))
        finally:
            router.close()
        await mc.signal(mid, "rollback", operator="test", reason="after the cut-over")
        final = await mc.result(mid, timeout=120)
    assert final.phase == Phase.ROLLED_BACK, final.error
    routing = sandbox.catalog.get_routing("default", "docs")
    assert routing is not None
    assert routing.read_version == "v1"
    source = open_source(spec)
    assert source.fetch(np.array([5_000, 3]))[0].tolist() == [5_000]
    assert source.count() == 2000
    # The abandoned version goes without taking the records.
    pruned = prune_version(
        sandbox.catalog, "default", "docs", "v2", "test", reason="test", ignore_retention=True
    )
    assert pruned.action == "pruned", pruned
    assert source.count() == 2000
    assert _rows(sandbox.store.url or "") == (2000, 1)


def test_a_router_writes_versions_that_share_records_once(sandbox: Sandbox) -> None:
    sandbox.seed(500)
    spec = sandbox.spec(records="shared")
    prepare(sandbox.catalog, spec, "test")
    sandbox.route("both", write_versions=["v1", "v2"])
    router = Router(sandbox.catalog, refresh_seconds=0)
    try:
        plan, _ = router._writable("default", "docs")
        assert [s.version for s in plan.writes] == ["v1", "v2"]
        assert [s.version for s in plan.stored] == ["v1"]  # one set of records, one write
        vec = np.random.default_rng(3).standard_normal((1, sandbox.dim)).astype(np.float32)
        router.upsert("default", "docs", np.array([9_999]), vec)
    finally:
        router.close()
    assert open_target(spec).fetch(np.array([9_999]))[0].tolist() == [9_999]


def test_a_store_of_an_earlier_release_gains_the_columns_and_shares_its_records(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "earlier.db")
    with engine_for(url).begin() as conn:  # vm_namespaces as releases before records_ns made it
        conn.execute(
            text(
                "CREATE TABLE vm_namespaces (ns INTEGER PRIMARY KEY, tenant VARCHAR(64) NOT NULL, "
                "collection VARCHAR(64) NOT NULL, version VARCHAR(64) NOT NULL, "
                "dimension INTEGER NOT NULL, record_schema TEXT, "
                "UNIQUE (tenant, collection, version))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO vm_namespaces (tenant, collection, version, dimension) "
                "VALUES ('t', 'c', 'v1', 8)"
            )
        )
    v1 = BuiltinStore.open(url, Scope("t", "c", "v1"))
    v1.upsert(np.arange(1, 11), _vectors(10))
    v2 = BuiltinStore.share(url, Scope("t", "c", "v2"), Scope("t", "c", "v1"))
    assert v2.count() == 10
    assert _rows(url) == (10, 2)


@pytest.mark.integration
def test_plan_says_nothing_is_copied_and_refuses_what_cannot_share(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.seed(500)
    data = sandbox.spec(records="shared").model_dump(mode="json")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    shown = vecmigrate("plan", "--catalog", sandbox.catalog.url, "--json", str(path))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    plan = json.loads(shown.stdout)
    assert plan["ok"] is True
    checks = {c["name"]: c["detail"] for c in plan["checks"]}
    assert "nothing is copied, the index alone is built" in checks["records"]
    steps = dict(plan["steps"])
    assert steps["BACKFILLING"].startswith("read and check (records shared, none written) 500")
    data["target"]["store"] = {"kind": "pgvector", "url": "postgresql+psycopg://db/app"}
    path.write_text(yaml.safe_dump(data))
    refused = vecmigrate("plan", "--catalog", sandbox.catalog.url, "--json", str(path))
    assert refused.returncode != 0
    assert "records: shared, but target.store is pgvector" in refused.stderr + refused.stdout


@pytest.mark.parametrize(
    "index",
    every_artifact_kind(nlist=8, nprobe=8, pq_m=4, pq_nbits=4),
    ids=lambda index: index.kind,
)
def test_every_artifact_index_kind_is_built_over_shared_records(
    sandbox: Sandbox, index: Any
) -> None:
    sandbox.seed(1500)
    target = sandbox.version("v2", index.model_dump(mode="json"))
    spec = sandbox.spec(records="shared", target=target.model_dump(mode="json"))
    prep, index_id = copy_and_build(sandbox, spec)
    assert sandbox.catalog.get_index(index_id).artifacts
    report = validate(sandbox, spec, prep, index_id)
    verdicts = {v.name: v for v in report.verdicts}
    assert verdicts["count_parity"].passed
    assert verdicts["checksum_parity"].passed
    assert _rows(sandbox.store.url or "") == (1500, 2)  # one set of records, nothing copied


def test_the_state_a_gate_measured_counts_shared_records_once(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a gate measured is told by both versions' counts; versions that read one set of
    records are counted once (a count of every record: 0.19 s at 1M on SQLite)."""
    from vecmigrate.activities.migration import MigrationActivities

    sandbox.seed(500)
    acts = MigrationActivities(sandbox.catalog.url)
    counted: list[int] = []
    real = BuiltinStore.count

    def count(store: BuiltinStore, *args: Any, **kwargs: Any) -> int:
        counted.append(1)
        return real(store, *args, **kwargs)

    monkeypatch.setattr(BuiltinStore, "count", count)
    for records, name, counts in (("copy", "v2", 2), ("shared", "v3", 1)):
        target_index = {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
        spec = sandbox.spec(
            records=records, target=sandbox.version(name, target_index).model_dump(mode="json")
        )
        prepare(sandbox.catalog, spec, "test")
        stores = open_source(spec), open_target(spec)
        counted.clear()
        state = acts._data_state(spec, *stores)
        target = 500 if records == "shared" else 0
        assert state.startswith(f"source 500, target {target}, change log at "), state
        assert len(counted) == counts
