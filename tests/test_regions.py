"""Regions and tenants: residency by task queue, a global barrier, per-region rollback, tenant
isolation. Region workers are separate processes, each with its own catalog and stores, on the
real dev server; what ran where is read from the workers' own records."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox, WorkerProcess
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.residency import Residency
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.errors import SpecError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.regions import RegionalStatus, child_plans
from vecmigrate.model.spec import BuiltinStoreRef, MigrationSpec, VersionSpec, parse_spec
from vecmigrate.model.tasks import ControlInput
from vecmigrate.serving.router import Router
from vecmigrate.stores import WHOLE, Scope, open_store
from vecmigrate.workers.main import build_worker

REGIONS = ("eu", "us", "ap")
N = 3000
DIM = 16
GOOD = {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
POOR = {"kind": "hnswlib_hnsw", "m": 2, "ef_search": 1, "ef_construction": 4}


def store(root: Path, region: str, name: str, **extra: Any) -> dict[str, Any]:
    return BuiltinStoreRef(
        url=sqlite_url(root / region / f"{name}.db"),
        artifacts=str(root / region / "artifacts"),
        location=f"{region}-1",
        **extra,
    ).model_dump(mode="json")


def version(name: str, store_ref: dict[str, Any], index: dict[str, Any]) -> VersionSpec:
    return VersionSpec.model_validate(
        {
            "name": name,
            "store": store_ref,
            "embedding": {"model_id": "m", "dimension": DIM},
            "index": index,
        }
    )


def eu_spec_data(root: Path, prefix: str, **fields: Any) -> dict[str, Any]:
    """A spec moving ``docs`` from v1 (flat) to v2 (``GOOD``) in the eu region's store, with
    ``fields`` added; its id starts with ``prefix``."""
    return {
        "id": f"{prefix}-{uuid.uuid4().hex[:8]}",
        "collection": "docs",
        "source": version("v1", store(root, "eu", "store"), {"kind": "faiss_flat"}).model_dump(
            mode="json"
        ),
        "target": version("v2", store(root, "eu", "store"), GOOD).model_dump(mode="json"),
        "shards": {"count": 2},
        "gates": {"min_recall": 0.8, "sample_queries": 50},
        "cutover": {"mode": "automatic", "bake_seconds": 0.5},
        **fields,
    }


def regional_spec(root: Path, **overrides: Any) -> MigrationSpec:
    data = eu_spec_data(
        root,
        "rg",
        batch_size=500,
        heartbeat_seconds=3,
        regions=[
            {
                "name": r,
                "location": f"{r}-1",
                "task_queue": f"{root.name}-{r}",
                "source_store": store(root, r, "store"),
                "target_store": store(root, r, "store"),
            }
            for r in REGIONS
        ],
        region_policy={"cutover_order": ["eu", "ap", "us"], "pause_between_seconds": 1.0},
    )
    data.update(overrides)
    return parse_spec(data)


def region_catalog(root: Path, region: str) -> Catalog:
    return Catalog(sqlite_url(root / region / "catalog.db"))


def seed_region(root: Path, region: str, tenants: tuple[str, ...] = ("default",)) -> None:
    catalog = region_catalog(root, region)
    for n, tenant in enumerate(tenants):
        seed_collection(
            catalog,
            tenant,
            "docs",
            version("v1", store(root, region, "store"), {"kind": "faiss_flat"}),
            sequential_ids(N),
            clustered(N, DIM, clusters=24, seed=hash((region, n)) % 1000),
            shards=1,
        )


@pytest.fixture
def regions(tmp_path: Path, env: WorkflowEnvironment) -> Iterator[dict[str, WorkerProcess]]:
    address = env.client.service_client.config.target_host
    for r in REGIONS:
        (tmp_path / r).mkdir()
        seed_region(tmp_path, r)
    workers = {
        r: WorkerProcess(
            tmp_path, address, f"{tmp_path.name}-{r}", sqlite_url(tmp_path / r / "catalog.db"), r
        )
        for r in REGIONS
    }
    try:
        yield workers
    finally:
        for w in workers.values():
            w.stop()


class ControlPlane:
    """The control-plane worker (no region): runs regional workflows and their ledger."""

    def __init__(self, client: Client, root: Path) -> None:
        self.client, self.root = client, root
        self.catalog_url = sqlite_url(root / "control.db")
        self.queue = f"control-{uuid.uuid4().hex[:8]}"

    async def __aenter__(self) -> MigrationClient:
        self._executor = ThreadPoolExecutor(max_workers=6)
        self._worker = build_worker(self.client, self.queue, self.catalog_url, self._executor)
        await self._worker.__aenter__()
        return MigrationClient(self.client, self.queue)

    async def __aexit__(self, *exc: object) -> None:
        await self._worker.__aexit__(None, None, None)
        self._executor.shutdown()


async def regional_until(
    mc: MigrationClient, mid: str, done: Any, timeout: float = 180
) -> RegionalStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            st = await mc.regional_status(mid)
            if done(st):
                return st
        except Exception:
            st = None
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; last status {st}")
        await asyncio.sleep(0.2)


def phase_times(root: Path, region: str, child: str) -> dict[str, datetime]:
    """When the child entered each phase, from the region's own ledger (first time)."""
    out: dict[str, datetime] = {}
    for e in region_catalog(root, region).entries(child):
        if e.kind == "phase":
            out.setdefault(e.data["to"], datetime.fromisoformat(e.at))
        if e.kind == "migration.started":
            out.setdefault("STARTED", datetime.fromisoformat(e.at))
    return out


def assert_resident(root: Path, children: dict[str, str]) -> None:
    """Every activity run recorded by a region's workers was that region's, and no region's
    catalog holds another region's migration."""
    for region in REGIONS:
        runs = Residency(region_catalog(root, region), region).recorded()
        assert len(runs) > 10, (region, len(runs))
        assert {r.worker_region for r in runs} == {region}
        assert {r.region for r in runs} == {region}
        assert {r.migration_id for r in runs} <= {children[region]}
        entries = region_catalog(root, region).entries()
        mine = [e for e in entries if e.migration_id == children[region]]
        assert mine
        assert all(e.region == region for e in mine)
        assert all(e.tenant == "default" for e in mine)
        others = {children[r] for r in REGIONS if r != region}
        assert not [e for e in entries if e.migration_id in others]
        assert region_catalog(root, region).verify_ledger() == []


# -- the spec and the plan -----------------------------------------------------------------------


def test_spec_refuses_residency_and_tenant_crossings(tmp_path: Path) -> None:
    spec = regional_spec(tmp_path)
    assert spec.regional
    bad = spec.model_dump(mode="json")
    bad["regions"][1]["target_store"]["location"] = "eu-1"
    with pytest.raises(SpecError, match=r"region us: the target store is in eu-1, but the region"):
        parse_spec(bad)
    bad = spec.model_dump(mode="json")
    bad["regions"][2]["source_store"]["tenants"] = ["acme"]
    with pytest.raises(SpecError, match=r"holds only tenants \['acme'\].*would cross tenants"):
        parse_spec(bad)
    bad = spec.model_dump(mode="json")
    bad["tenants"] = ["acme"]
    bad["tenant_limits"] = {"globex": {"max_parallel_shards": 1}}
    with pytest.raises(SpecError, match=r"tenant_limits names \['globex'\]"):
        parse_spec(bad)
    bad = spec.model_dump(mode="json")
    bad["region_policy"]["cutover_order"] = ["eu", "us"]
    with pytest.raises(SpecError, match="must name each region once"):
        parse_spec(bad)
    ok = spec.model_dump(mode="json")
    ok["regions"][0]["allowed_locations"] = ["eu-1", "eu-2"]
    ok["regions"][0]["target_store"]["location"] = "eu-2"
    assert parse_spec(ok).regions[0].allowed() == ("eu-1", "eu-2")


def test_children_get_their_region_tenant_and_limits(tmp_path: Path) -> None:
    spec = regional_spec(
        tmp_path,
        tenants=["acme", "globex"],
        tenant_limits={"acme": {"max_parallel_shards": 1, "max_vectors_per_second": 500}},
    )
    plans = child_plans(
        spec, "mig", {r: ["acme", "globex"] for r in REGIONS}, default_queue="control"
    )
    assert [p.workflow_id for p in plans][:2] == ["mig.eu.acme", "mig.eu.globex"]
    assert len(plans) == 6
    acme_us = next(p for p in plans if p.workflow_id == "mig.us.acme")
    assert acme_us.task_queue == f"{tmp_path.name}-us"
    child = acme_us.spec
    assert (child.region, child.tenant, child.regional) == ("us", "acme", False)
    assert child.source.store.location == "us-1"
    assert "us" in str(child.target.store.url)
    assert child.cutover.mode == "manual"  # the parent's barrier gives the go
    assert child.gates.on_failure == "rollback"
    assert (child.max_parallel_shards, child.max_vectors_per_second) == (1, 500)
    globex = next(p for p in plans if p.workflow_id == "mig.us.globex").spec
    assert globex.max_vectors_per_second is None


def test_a_worker_refuses_another_regions_work(tmp_path: Path) -> None:
    from temporalio.exceptions import ApplicationError

    acts = MigrationActivities(sqlite_url(tmp_path / "eu.db"), region="eu")
    acts.set_control(ControlInput(migration_id="m.eu", paused=False, region="eu"))
    with pytest.raises(ApplicationError) as refused:
        acts.set_control(ControlInput(migration_id="m.us", paused=True, region="us"))
    assert refused.value.type == "ResidencyError"
    assert "belongs to region us but reached a worker of region eu" in str(refused.value)
    runs = acts.residency.recorded()
    assert [(r.migration_id, r.region, r.worker_region) for r in runs] == [("m.eu", "eu", "eu")]
    assert acts.journal.control("m.us").paused is False  # nothing was written for it


# -- end to end, worker processes standing for regions ------------------------------------


async def test_three_regions_canary_first_barrier_then_ordered_cutover(
    client: Client, tmp_path: Path, regions: dict[str, WorkerProcess]
) -> None:
    spec = regional_spec(tmp_path)
    async with ControlPlane(client, tmp_path) as mc:
        mid = await mc.start(spec, operator="alice")
        final = await regional_until(
            mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK)
        )
    assert final.phase == Phase.COMPLETED, final
    children = {s.region: s.workflow_id for s in final.regions}
    assert all(s.phase == Phase.COMPLETED for s in final.regions)
    assert final.cut_over == [children["eu"], children["ap"], children["us"]]
    times = {r: phase_times(tmp_path, r, children[r]) for r in REGIONS}
    # The canary passed its gates before any other region started.
    assert times["eu"]["AWAITING_CUTOVER"] < min(times[r]["STARTED"] for r in ("us", "ap"))
    # The barrier: no region cut over before every region passed its gates.
    assert max(t["AWAITING_CUTOVER"] for t in times.values()) < min(
        t["CUT_OVER"] for t in times.values()
    )
    # Cut-overs in the policy's order, with the pause between regions.
    cuts = [times[r]["CUT_OVER"] for r in ("eu", "ap", "us")]
    assert cuts == sorted(cuts)
    assert all((b - a).total_seconds() >= 0.9 for a, b in itertools.pairwise(cuts))
    for r in REGIONS:
        routing = region_catalog(tmp_path, r).get_routing("default", "docs")
        assert routing is not None
        assert routing.read_version == "v2"
    assert_resident(tmp_path, children)
    control_runs = Residency(Catalog(sqlite_url(tmp_path / "control.db")), None).recorded()
    assert {r.region for r in control_runs} == {None}  # the control plane touched no region
    # Its ledger, and the operator roles its messages are checked against.
    assert {r.activity for r in control_runs} == {"record", "access_policy"}


@pytest.mark.parametrize("policy", ["wait", "rollback_all"])
async def test_a_region_failing_its_gates_rolls_back_and_the_others_follow_policy(
    client: Client, tmp_path: Path, regions: dict[str, WorkerProcess], policy: str
) -> None:
    data = regional_spec(tmp_path).model_dump(mode="json")
    # us gets a target index that cannot reach the recall gate.
    data["regions"][1]["target_index"] = POOR
    data["region_policy"]["on_region_failure"] = policy
    spec = parse_spec(data)
    async with ControlPlane(client, tmp_path) as mc:
        mid = await mc.start(spec, operator="alice")
        if policy == "wait":
            held = await regional_until(
                mc, mid, lambda s: "out of the migration" in s.blocked_reason
            )
            by = {s.region: s for s in held.regions}
            assert by["us"].phase == Phase.ROLLED_BACK
            assert by["us"].failed
            assert "gate failed" in by["us"].reason
            assert by["eu"].phase == by["ap"].phase == Phase.AWAITING_CUTOVER
            assert held.cut_over == []
            await mc.signal(mid, "approve_cutover", operator="bob", reason="go without us")
        final = await regional_until(
            mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK, Phase.ABORTED)
        )
    by = {s.region: s for s in final.regions}
    assert by["us"].phase == Phase.ROLLED_BACK
    if policy == "wait":
        assert final.phase == Phase.COMPLETED
        assert by["eu"].phase == by["ap"].phase == Phase.COMPLETED
        assert "not migrated: us/default (ROLLED_BACK)" in final.error
        reads = {"eu": "v2", "ap": "v2", "us": "v1"}
    else:
        assert final.phase == Phase.ROLLED_BACK
        assert all(s.phase == Phase.ROLLED_BACK for s in final.regions)
        reads = dict.fromkeys(REGIONS, "v1")
    for r, expected in reads.items():
        routing = region_catalog(tmp_path, r).get_routing("default", "docs")
        assert routing is not None
        assert routing.read_version == expected, r


async def test_a_killed_region_worker_holds_only_its_region(
    client: Client, tmp_path: Path, regions: dict[str, WorkerProcess]
) -> None:
    spec = regional_spec(tmp_path, max_vectors_per_second=1500.0)
    async with ControlPlane(client, tmp_path) as mc:
        mid = await mc.start(spec, operator="alice")
        st = await regional_until(
            mc,
            mid,
            lambda s: any(x.region == "ap" and x.phase == Phase.BACKFILLING for x in s.regions),
        )
        regions["ap"].kill()
        # The other regions go on to the barrier while ap has no worker at all.
        st = await regional_until(
            mc, mid, lambda s: all(x.ready for x in s.regions if x.region != "ap")
        )
        by = {s.region: s for s in st.regions}
        assert by["ap"].phase == Phase.BACKFILLING
        assert st.cut_over == []
        regions["ap"].restart()
        final = await regional_until(
            mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK)
        )
    assert final.phase == Phase.COMPLETED, final
    children = {s.region: s.workflow_id for s in final.regions}
    ap = region_catalog(tmp_path, "ap")
    store_ap = open_store(
        BuiltinStoreRef.model_validate(store(tmp_path, "ap", "store")),
        Scope("default", "docs", "v2"),
    )
    assert store_ap.count(WHOLE) == N
    assert ap.get_routing("default", "docs").read_version == "v2"  # type: ignore[union-attr]
    assert_resident(tmp_path, children)


async def test_one_tenant_migrates_while_anothers_reads_and_writes_are_untouched(
    client: Client, sandbox: Sandbox
) -> None:
    root = sandbox.root
    (root / "eu").mkdir()
    seed_region(root, "eu", tenants=("acme", "globex"))
    catalog = region_catalog(root, "eu")
    before = catalog.get_routing("globex", "docs")
    spec = parse_spec(
        eu_spec_data(
            root,
            "tn",
            batch_size=300,
            tenants=["acme"],
            tenant_limits={"acme": {"max_parallel_shards": 1, "max_vectors_per_second": 3000}},
        )
    )
    router = Router(catalog, refresh_seconds=0.2)
    queries = clustered(50, DIM, clusters=24, seed=5)
    outcomes: list[str] = []
    stop = threading.Event()

    def globex_traffic() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                res = router.search("globex", "docs", queries[n % 50], 5)
                outcomes.append(f"search {res.version}")
                router.upsert("globex", "docs", np.array([100_000 + n]), queries[n % 50][None])
                outcomes.append("upsert")
            except Exception as exc:
                outcomes.append(f"failed {exc}")
            stop.wait(0.02)

    traffic = threading.Thread(target=globex_traffic)
    queue = f"tn-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=6) as executor:
        async with build_worker(client, queue, catalog.url, executor):
            mc = MigrationClient(client, queue)
            traffic.start()
            mid = await mc.start(spec, operator="alice")
            final = await regional_until(
                mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK)
            )
            child = await mc.status(final.regions[0].workflow_id)
            stop.set()
            traffic.join()
    router.close()
    assert final.phase == Phase.COMPLETED, final
    assert [(s.region, s.tenant) for s in final.regions] == [(None, "acme")]
    assert (child.max_vectors_per_second, len(child.shards)) == (3000, 2)
    assert catalog.get_routing("acme", "docs").read_version == "v2"  # type: ignore[union-attr]
    # globex: served by v1 throughout, every write landed, its routing row never changed.
    assert outcomes
    assert not [o for o in outcomes if o.startswith("failed")], outcomes[:3]
    assert {o for o in outcomes if o.startswith("search")} == {"search v1"}
    after = catalog.get_routing("globex", "docs")
    assert after == before
    globex_v1 = open_store(
        BuiltinStoreRef.model_validate(store(root, "eu", "store")), Scope("globex", "docs", "v1")
    )
    assert globex_v1.count(WHOLE) == N + outcomes.count("upsert")
    with pytest.raises(Exception, match="globex/docs@v2"):
        open_store(
            BuiltinStoreRef.model_validate(store(root, "eu", "store")),
            Scope("globex", "docs", "v2"),
        )
    runs = Residency(catalog, None).recorded()
    # The child's work and the parent's ledger (control calls name no tenant); never globex.
    assert {r.tenant for r in runs} - {None} == {"acme", "*"}
    assert not [e for e in catalog.entries() if e.tenant == "globex" and e.migration_id]


def test_plan_of_a_regional_migration_names_queues_order_and_policy(tmp_path: Path) -> None:
    from vecmigrate.control.plan import plan_migration

    spec = regional_spec(
        tmp_path, tenants=["acme"], tenant_limits={"acme": {"max_parallel_shards": 1}}
    )
    for r in REGIONS:
        seed_region(tmp_path, r, tenants=("acme",))
    plan = plan_migration(None, spec, lambda region: region_catalog(tmp_path, str(region)))
    assert plan.ok, plan.problems
    details = {c.name: c.detail for c in plan.checks}
    assert f"run only by workers on {tmp_path.name}-us" in details["residency us"]
    assert "at most 1 shards at once" in details["limits acme"]
    steps = dict(plan.steps)
    assert steps["ROLLOUT"].startswith("canary eu alone until its gates pass, then us, ap")
    assert steps["CUT_OVER"] == "eu -> ap -> us, 1.0s between regions"
    assert "the others wait for an operator" in steps["ON FAILURE"]


async def test_rollback_of_one_region_at_the_barrier_then_the_others_cut_over(
    client: Client, tmp_path: Path, regions: dict[str, WorkerProcess]
) -> None:
    # Tenants "all": each region's own catalog says which tenants hold the collection.
    spec = regional_spec(tmp_path, tenants="all", cutover={"mode": "manual", "bake_seconds": 0.5})
    async with ControlPlane(client, tmp_path) as mc:
        mid = await mc.start(spec, operator="alice")
        assert await mc.is_regional(mid)
        held = await regional_until(mc, mid, lambda s: "approve_cutover" in s.blocked_reason)
        assert [(s.region, s.tenant) for s in held.regions] == [(r, "default") for r in REGIONS]
        assert all(s.ready for s in held.regions)
        await mc.signal(mid, "rollback", operator="carol", reason="us looks off", region="us")
        held = await regional_until(
            mc,
            mid,
            lambda s: any(x.region == "us" and x.phase == Phase.ROLLED_BACK for x in s.regions),
        )
        by = {s.region: s for s in held.regions}
        # The others still hold at the barrier.
        assert by["eu"].ready
        assert by["ap"].ready
        assert not by["us"].failed  # an operator's rollback, not a failed gate
        await mc.signal(mid, "approve_cutover", operator="alice", reason="eu and ap")
        final = await regional_until(
            mc, mid, lambda s: s.phase in (Phase.COMPLETED, Phase.ROLLED_BACK)
        )
    by = {s.region: s for s in final.regions}
    assert final.phase == Phase.COMPLETED
    assert (by["eu"].phase, by["ap"].phase, by["us"].phase) == (
        Phase.COMPLETED,
        Phase.COMPLETED,
        Phase.ROLLED_BACK,
    )
    assert [o.action for o in final.operators] == ["rollback", "approve_cutover"]
    us = region_catalog(tmp_path, "us").get_routing("default", "docs")
    assert us is not None
    assert us.read_version == "v1"
    control = Catalog(sqlite_url(tmp_path / "control.db")).entries(mid)
    assert [e.data["action"] for e in control if e.kind == "operator"] == [
        "rollback",
        "approve_cutover",
    ]
    assert next(e for e in control if e.kind == "operator").data["region"] == "us"
